# SPDX-License-Identifier: Apache-2.0
"""Fused kernels for diffusion (multimodal-generation) models.

This module is the only supported import surface for these kernels::

    from sglang.kernels.ops.diffusion import fp32_layernorm_bitexact

Implementations live in one subpackage per operator domain (``norm`` here) and
are resolved lazily (PEP 562): backends have disjoint, heavy dependencies
(Triton, CuTe DSL, ...), so an eager re-export would make each of them an
import-time requirement everywhere. ``_EXPORTS`` maps a public symbol to its
owner module; the import happens on first attribute access. ``_SPECS``
registers each op's backends with the capabilities they need (metadata only).
Read ``README.md`` first: several norms look interchangeable and are not.
"""

from __future__ import annotations

from typing import Any

from sglang.kernels.registry import register_kernel
from sglang.kernels.spec import CapabilityRequirement, KernelBackend, KernelSpec

_CUDA = frozenset({CapabilityRequirement.CUDA})

# (op id, backend, "owner:callable" relative to this package or absolute, caps)
_SPECS: tuple[tuple[str, KernelBackend, str, frozenset], ...] = (
    (
        "diffusion.fp32_layernorm",
        KernelBackend.TRITON,
        "norm.fp32_layernorm_bitexact:fp32_layernorm_bitexact",
        _CUDA,
    ),
    (
        "diffusion.layernorm_scale_shift",
        KernelBackend.TRITON,
        "norm.fp32_layernorm_bitexact:fused_layernorm_scale_shift_bitexact",
        _CUDA,
    ),
    (
        "diffusion.scale_residual_layernorm_scale_shift",
        KernelBackend.TRITON,
        "norm.fp32_layernorm_bitexact:fused_scale_residual_layernorm_scale_shift_bitexact",
        _CUDA,
    ),
)

for _op, _backend, _target, _caps in _SPECS:
    register_kernel(
        KernelSpec(
            op=_op,
            backend=_backend,
            target=(
                _target
                if _target.startswith("sglang.")
                else f"sglang.kernels.ops.diffusion.{_target}"
            ),
            capabilities=_caps,
        )
    )

# Public export table: symbol -> owning submodule, by domain, module, symbol.
_EXPORTS: dict[str, str] = {
    # Normalization: bit-exact fp32 LayerNorm and its adaLN fusions
    "can_use_fp32_layernorm_bitexact": "norm.fp32_layernorm_bitexact",
    "can_use_fused_layernorm_scale_shift_bitexact": "norm.fp32_layernorm_bitexact",
    "fp32_layernorm_bitexact": "norm.fp32_layernorm_bitexact",
    "fused_layernorm_scale_shift_bitexact": "norm.fp32_layernorm_bitexact",
    "fused_scale_residual_layernorm_scale_shift_bitexact": "norm.fp32_layernorm_bitexact",
    "FP32_LAYERNORM_REFERENCE_ENV": "norm.fp32_layernorm_select",
    "ProofRegistry": "norm.fp32_layernorm_select",
    "force_reference": "norm.fp32_layernorm_select",
    "fp32_layernorm_opaque": "norm.fp32_layernorm_select",
    "fp32_layernorm_path": "norm.fp32_layernorm_select",
    "fp32_layernorm_reference": "norm.fp32_layernorm_select",
    "fused_layernorm_path": "norm.fp32_layernorm_select",
    "gated_residual": "norm.fp32_layernorm_select",
    "is_capturing": "norm.fp32_layernorm_select",
    "layernorm_scale_shift_opaque": "norm.fp32_layernorm_select",
    "modulate": "norm.fp32_layernorm_select",
    "norm_scale_shift_chain": "norm.fp32_layernorm_select",
    "scale_residual_layernorm_scale_shift_opaque": "norm.fp32_layernorm_select",
    "scale_residual_norm_scale_shift_chain": "norm.fp32_layernorm_select",
    "tested_build": "norm.fp32_layernorm_select",
    "try_fp32_layernorm_single_pass": "norm.fp32_layernorm_select",
    "try_fused_layernorm_scale_shift": "norm.fp32_layernorm_select",
}


def __getattr__(name: str) -> Any:
    """Resolve a public symbol to its submodule on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    owner = module if module.startswith("sglang.") else f"{__name__}.{module}"
    value = getattr(import_module(owner), name)
    globals()[name] = value  # cache; later lookups skip __getattr__ entirely
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
