# SPDX-License-Identifier: Apache-2.0
"""Server-launch plugin: this project's FP32LayerNorm inside a real SGLang.

Installing the distribution ``sglang-mmgen-fp32-layernorm`` registers the entry
point ``sgl_mmgen_fp32ln`` in SGLang's group ``sglang.multimodal_gen.plugins``.
SGLang calls :func:`register` from ``load_plugins()``; it registers REPLACE hooks
that ``apply_plugin_hooks()`` then installs on upstream's ``FP32LayerNorm`` and on
the CUDA path of its ``LayerNormScaleShift`` / ``ScaleResidualLayerNormScaleShift``,
and an AROUND hook on the weight updater's ``load_weights_into_model`` that makes
live weight updates move the written parameters' version counters (``_updater``).

Invariants:

* The code that runs is this project's ``layernorm.py``, shipped in the wheel as
  the build-time copy ``sgl_mmgen_fp32ln._subtree.layernorm`` (see ``_loader``);
  nothing here re-implements it.
* Nothing is installed into, or shadows, the ``sglang`` package.
* On an SGLang outside ``_graft.SUPPORTED_SGLANG`` (>=0.5.22,<0.5.24) or whose
  classes lack the expected structure the plugin logs one warning and changes
  nothing (see ``_graft.structure_problems``); an updater that does not fit gets
  one warning and no hook, the norms are still grafted.

Importing this package imports neither torch nor sglang: SGLang loads every entry
point before it decides which plugins run.
"""

ENTRY_POINT = "sgl_mmgen_fp32ln"

__all__ = ["ENTRY_POINT", "register"]


def register() -> None:
    """SGLang's plugin callback: validate upstream, then register the hooks."""
    from sgl_mmgen_fp32ln._graft import register_hooks

    register_hooks()
