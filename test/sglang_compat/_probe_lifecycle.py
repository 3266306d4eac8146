# SPDX-License-Identifier: Apache-2.0
"""Child-process probe: run SGLang's plugin lifecycle and report what changed.

``python _probe_lifecycle.py [MISMATCH ...]`` prints one JSON object per line.
Without arguments it runs ``load_plugins(); apply_plugin_hooks()`` once, under
whatever ``SGLANG_PLUGINS`` the environment holds. Each MISMATCH (a key of
``MISMATCHES``) first bends upstream's module into that shape, runs the
lifecycle, reports, undoes the change and resets SGLang's lifecycle; after the
last one the unbent module is run once more as a positive control.
"""

import json
import logging
import sys

import sglang.multimodal_gen.runtime.layers.layernorm as upstream
from sgl_mmgen_fp32ln import _graft
from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp
from sglang.multimodal_gen.runtime.platforms import plugins

WATCHED = (
    "FP32LayerNorm",
    "LayerNormScaleShift",
    "ScaleResidualLayerNormScaleShift",
    "_NormScaleShift",
    "_ScaleResidualNormScaleShift",
)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _snapshot():
    classes = {name: getattr(upstream, name, None) for name in WATCHED}
    return {
        name: {k: id(v) for k, v in vars(cls).items()} if cls is not None else None
        for name, cls in classes.items()
    }


def _our_hook_targets():
    return sorted(
        target
        for target, hooks in plugins.HookRegistry._hooks.items()
        if any(src and src.plugin_name == "sgl_mmgen_fp32ln" for _, _, src in hooks)
    )


def run_lifecycle():
    handler = _Records()
    plugin_logger = logging.getLogger("sgl_mmgen_fp32ln")
    plugin_logger.addHandler(handler)
    plugin_logger.setLevel(logging.DEBUG)
    before = _snapshot()
    try:
        plugins.load_plugins()
        plugins.apply_plugin_hooks()
    finally:
        plugin_logger.removeHandler(handler)
    norm = getattr(upstream, "FP32LayerNorm", None)
    return {
        "changed": sorted(
            name for name, snap in _snapshot().items() if snap != before[name]
        ),
        "hook_targets": _our_hook_targets(),
        "patched": isinstance(norm, type) and "_drop_fp32_cache" in vars(norm),
        "warnings": [
            r.getMessage() for r in handler.records if r.levelno >= logging.WARNING
        ],
    }


_MISSING = object()


def _swap(obj, name, value):
    """Set (or, for ``_MISSING``, delete) ``obj.name``; return the undo."""
    old = vars(obj).get(name, _MISSING)
    if value is _MISSING:
        delattr(obj, name)
    else:
        setattr(obj, name, value)

    def undo():
        if old is _MISSING:
            if name in vars(obj):
                delattr(obj, name)
        else:
            setattr(obj, name, old)

    return undo


def _unimportable(name):
    old = sys.modules[name]
    sys.modules[name] = None  # importing it now raises ImportError

    def undo():
        sys.modules[name] = old

    return undo


def _not_a_layernorm():
    class FP32LayerNorm(CustomOp):
        def _cached_fp32_param(self, attr, param, device):
            return param

        def forward_native(self, inputs):
            return inputs

        def forward_cuda(self, inputs):
            return inputs

    return FP32LayerNorm


def _forward_native_with_extra_parameter(self, inputs, residual=None):
    return inputs


MISMATCHES = {
    "module_not_importable": lambda: _unimportable(upstream.__name__),
    "class_missing": lambda: _swap(upstream, "FP32LayerNorm", _MISSING),
    "not_an_nn_layernorm": lambda: _swap(upstream, "FP32LayerNorm", _not_a_layernorm()),
    "no_cached_fp32_param": lambda: _swap(
        upstream.FP32LayerNorm, "_cached_fp32_param", _MISSING
    ),
    "forward_native_signature": lambda: _swap(
        upstream.FP32LayerNorm, "forward_native", _forward_native_with_extra_parameter
    ),
    "port_already_upstream": lambda: _swap(
        upstream.FP32LayerNorm, "_FP32_CACHE_ATTRS", {"weight": "_w", "bias": "_b"}
    ),
    "fused_class_missing": lambda: _swap(
        upstream, "ScaleResidualLayerNormScaleShift", _MISSING
    ),
    "fused_norm_type": lambda: _swap(upstream.LayerNormScaleShift, "norm_type", "rms"),
    "version_out_of_range": lambda: _swap(
        _graft, "SUPPORTED_SGLANG", ((0, 4, 0), (0, 5, 0))
    ),
}
UPDATER = "sglang.multimodal_gen.runtime.post_training.weights_updater"


def _updater_signature():
    import importlib

    module = importlib.import_module(UPDATER)

    def load_weights_into_model(weights_iter):
        return None

    return _swap(module, "load_weights_into_model", load_weights_into_model)


# one child process each: they leave the updater imported or hooked
UPDATER_CASES = {
    "updater_not_found": lambda: _unimportable_missing(UPDATER),
    "updater_signature": _updater_signature,
    "updater_import_fails": lambda: _unimportable_missing("cache_dit"),
}


def _unimportable_missing(name):
    old = sys.modules.get(name, _MISSING)
    sys.modules[name] = None

    def undo():
        if old is _MISSING:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old

    return undo


def main(argv):
    if not argv:
        print(json.dumps({"case": "plain", **run_lifecycle()}))
        return
    if argv[0] in UPDATER_CASES:
        (case,) = argv
        undo = UPDATER_CASES[case]()
        imported = UPDATER in sys.modules and sys.modules[UPDATER] is not None
        try:
            result = run_lifecycle()
        finally:
            undo()
        result["updater_imported_at_register"] = imported
        result["updater_patched"] = (
            f"{UPDATER}.load_weights_into_model" in plugins.HookRegistry._patched
        )
        print(json.dumps({"case": case, **result}))
        return
    for case in argv:
        undo = MISMATCHES[case]()
        try:
            result = run_lifecycle()
        finally:
            undo()
            plugins._reset_lifecycle_for_tests()
        print(json.dumps({"case": case, **result}))
    print(json.dumps({"case": "control", **run_lifecycle()}))


if __name__ == "__main__":
    main(sys.argv[1:])
