# SPDX-License-Identifier: Apache-2.0
"""Path selection and first-use proof for the bit-exact fp32 LayerNorm family.

``FP32LayerNorm`` and the LayerNorm adaLN modules call into this module; it
picks the fastest path that is bit-identical to their reference and proves it
on the device at hand before taking it:

* ``fp32_layernorm_path`` names the single-pass path for given operands;
* ``try_fp32_layernorm_single_pass`` runs it (``None``: take the caller's own
  cached path);
* ``try_fused_layernorm_scale_shift`` runs the fused kernel against a reference
  chain that the caller passes in (``None``: run that chain).

A fast path is only taken after it reproduced its reference bit for bit on this
device and torch build, on random inputs of the configuration at hand
(``ProofRegistry``). The unit tests run the same comparison over a wide sweep;
the proof guards builds the tests never saw.
"""

import math
import os
import threading
import warnings
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion.norm.fp32_layernorm_bitexact import (
    _aligned,
    _launch_fp32_norm,
    _tensor_key,
    _tuning,
    can_use_fp32_layernorm_bitexact,
    can_use_fused_layernorm_scale_shift_bitexact,
    fp32_layernorm_bitexact,
    plan_for,
    triton,
)

# A/B and debugging switch: every FP32LayerNorm (standalone or inside the fused
# modulation modules) computes the uncached fp32 reference on every call.
FP32_LAYERNORM_REFERENCE_ENV = "SGLANG_DIFFUSION_FP32_LAYERNORM_REFERENCE"
_FORCE_REFERENCE = os.environ.get(FP32_LAYERNORM_REFERENCE_ENV, "").strip().lower() in (
    "1",
    "true",
    "yes",
    "on",
)

# Inputs below this many elements take the ATen routes or the eager chain instead
# of the kernel. 0: a prepared launch (see _Plan) costs less host time than those
# at every size, and is one kernel instead of up to six.
_TRITON_MIN_ELEMENTS = 0

_REDUCED_FLOAT_DTYPES = (torch.bfloat16, torch.float16)


def force_reference() -> bool:
    """Whether the reference env switch is on (read once, at import)."""
    return _FORCE_REFERENCE


def is_capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def fp32_layernorm_reference(
    x: torch.Tensor,
    normalized_shape: Tuple[int, ...],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """The uncached reference every fp32 LayerNorm path is bit-identical to:
    ``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)``,
    with the parameters moved to ``x``'s device."""
    device = x.device
    w = None if weight is None else weight.float().to(device=device)
    b = None if bias is None else bias.float().to(device=device)
    return F.layer_norm(x.float(), tuple(normalized_shape), w, b, eps).to(x.dtype)


class ProofRegistry:
    """Per-process record of which fast paths matched their reference here.

    ``proven(key, ...)`` checks a configuration once (outside CUDA graph
    capture, where nothing may synchronize) and remembers the verdict; a
    mismatch disables that configuration for the process with one warning.
    """

    def __init__(self) -> None:
        self._verdicts: dict = {}
        # re-entrant: a reference may itself run through FP32LayerNorm
        self._lock = threading.RLock()

    def verdict(self, key) -> Optional[bool]:
        """The recorded verdict, without checking (``None``: not checked yet)."""
        return self._verdicts.get(key)

    def proven(self, key, device, fast_fn, ref_fn, make_inputs) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is not None:
            return verdict
        if is_capturing(device):
            # nothing may synchronize now; a graph captured here is replayed for
            # ever, so on a build the GPU suite proved, take the fast path and
            # prove this configuration at the next eager call
            return tested_build(device)
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is None:
                verdict = self._check(key, fast_fn, ref_fn, make_inputs)
                self._verdicts[key] = verdict
        return verdict

    @staticmethod
    def _check(key, fast_fn, ref_fn, make_inputs) -> bool:
        args = make_inputs()
        with torch.no_grad():
            fast = fast_fn(*args)
            ref = ref_fn(*args)
        fast = fast if isinstance(fast, tuple) else (fast,)
        ref = ref if isinstance(ref, tuple) else (ref,)
        ok = len(fast) == len(ref) and all(
            a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(fast, ref)
        )
        if not ok:
            warnings.warn(
                f"FP32LayerNorm fast path {key} is not bit-identical to the fp32 "
                "reference on this device/torch build; using the reference path",
                RuntimeWarning,
                stacklevel=4,
            )
        return ok

    def clear(self) -> None:
        with self._lock:
            self._verdicts.clear()


_PROOFS = ProofRegistry()

# (torch major.minor, CUDA, compute capability, Triton major.minor) on which the
# GPU unit suite ran every kernel configuration bit-identical to its reference
_TESTED_BUILDS = frozenset({("2.11", "13.0", (9, 0), "3.6")})


def _major_minor(version: Optional[str]) -> str:
    return ".".join((version or "").split("+")[0].split(".")[:2])


def tested_build(device: torch.device) -> bool:
    """Whether this process runs a build and GPU the GPU suite proved exact."""
    if device.type != "cuda" or triton is None:
        return False
    build = (
        _major_minor(torch.__version__),
        torch.version.cuda,
        torch.cuda.get_device_capability(device),
        _major_minor(triton.__version__),
    )
    return build in _TESTED_BUILDS


def _random_rows(rows: int, dim: int, dtype, device, gen) -> torch.Tensor:
    # an offset mean and uneven scale exercise the centring, not just the scaling
    t = torch.randn(rows, dim, generator=gen, device=device, dtype=torch.float32)
    return (t * 3.0 + 0.5).to(dtype)


def _like(p: Optional[torch.Tensor], dim: int, device, gen) -> Optional[torch.Tensor]:
    if p is None:
        return None
    return torch.randn(dim, generator=gen, device=device).to(p.dtype)


def _dtype_of(t: Optional[torch.Tensor]) -> Optional[torch.dtype]:
    return None if t is None else t.dtype


def fp32_layernorm_path(
    x: torch.Tensor,
    normalized_shape: Tuple[int, ...],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> str:
    """Name the single-pass path for these operands when grad is off.

    ``"triton"``: ``fp32_layernorm_bitexact`` (see its predicate), for inputs of
    at least ``_TRITON_MIN_ELEMENTS`` elements. ``"aten_reduced"``: other CUDA
    bf16/fp16 inputs with parameters absent or in the input dtype, all aligned:
    ATen's reduced-precision kernel, which computes in fp32 internally in the
    same order as its fp32 kernel. ``"cached"``: everything else (CPU, fp32
    input, misaligned or mixed operands): the caller's cached fp32 parameter
    copies and ``F.layer_norm`` on ``x.float()``. ``"reference"``: the env
    switch is set.

    Alignment matters because the reference runs ATen's fp32 kernel, which picks
    its (replayed) vectorized variant only for 16-byte-aligned operands: fresh
    ``.float()`` copies always are, fp32 parameters are passed as they are.
    """
    if _FORCE_REFERENCE:
        return "reference"
    if x.device.type != "cuda" or x.dtype not in _REDUCED_FLOAT_DTYPES:
        return "cached"
    params = [p for p in (weight, bias) if p is not None]
    if any(p.device != x.device for p in params):
        return "cached"
    if x.numel() >= _TRITON_MIN_ELEMENTS and can_use_fp32_layernorm_bitexact(
        x, normalized_shape, weight, bias
    ):
        return "triton"
    if all(p.dtype == x.dtype for p in params):
        # ATen picks its kernel by alignment; the reference (fresh fp32 copies)
        # always gets the vectorized one, so ours must too
        vec_bytes = 4 * x.element_size()
        x_ok = not x.is_contiguous() or _aligned(x, vec_bytes)
        if x_ok and all(_aligned(p, vec_bytes) for p in params):
            return "aten_reduced"
    return "cached"


# Decisions per operand configuration: everything below is a function of the
# shapes, strides, dtypes, devices, alignments and eps of the operands (the
# _runner_key) plus the proofs, so once a proof is final the decision is stored
# and a call costs one key and one dict lookup before the launch.
_RUNNERS: dict = {}
_MAX_RUNNERS = 4096


def _runner_key(config, x, weight, bias, *more) -> tuple:
    # config: eps, or (eps, normalized_shape); then the operands, None or not.
    # The three every caller passes are written out: building the key through
    # map and unpacking cost a fifth more, on every call
    key = (_FORCE_REFERENCE, config, _tensor_key(x), _tensor_key(weight),
           _tensor_key(bias))  # fmt: skip
    return key + tuple(map(_tensor_key, more)) if more else key


def _remember(key, runner) -> None:
    if len(_RUNNERS) >= _MAX_RUNNERS:
        _RUNNERS.clear()
    _RUNNERS[key] = runner


def _single_pass_runner(x, shape, weight, bias, eps):
    """``(runner or None, final)``; ``final``: the decision may be stored.

    A runner is called as ``runner(x, weight, bias, eps)``.
    """
    path = fp32_layernorm_path(x, shape, weight, bias)
    if path not in ("triton", "aten_reduced"):
        return None, True
    if path == "aten_reduced":

        def run(x, weight, bias, eps):
            return F.layer_norm(x, shape, weight, bias, eps)

        variant = None
    else:
        dim = shape[0]
        if x.is_contiguous():
            run = plan_for(x.view(-1, dim), weight, bias, eps)
            variant = run.tuning
        else:
            # a contiguous copy goes through the plan of its rows, whose variant
            # _tuning gives; asking that plan here would need a copy of x, and
            # under CUDA-graph capture (runner not final) every captured call
            # would record it
            run = fp32_layernorm_bitexact
            variant = _tuning(x.numel() // max(dim, 1), dim, False, False)

    # the proof runs the kernel variant (kernel and knobs) this call takes
    key = (path, x.device, x.dtype, shape, _dtype_of(weight), _dtype_of(bias),
           _variant_key(variant))  # fmt: skip
    if not _PROOFS.verdict(key):

        def make_inputs():
            gen = torch.Generator(device=x.device).manual_seed(1245)
            rows, dim = 257, math.prod(shape)
            cx = _random_rows(rows, dim, x.dtype, x.device, gen)
            cw, cb = _like(weight, dim, x.device, gen), _like(bias, dim, x.device, gen)
            cw = None if cw is None else cw.view(shape)
            cb = None if cb is None else cb.view(shape)
            return cx.view(rows, *shape), shape, cw, cb, eps

        def fast(x, shape, weight, bias, eps):
            if variant is None:
                return F.layer_norm(x, shape, weight, bias, eps)
            return _launch_fp32_norm(x, weight, bias, eps, tuning=variant)

        ok = _PROOFS.proven(key, x.device, fast, fp32_layernorm_reference, make_inputs)
        final = _PROOFS.verdict(key) is not None
        return (run if ok else None), final
    return run, True


def _variant_key(tuning: Optional[dict]) -> Optional[tuple]:
    return None if tuning is None else tuple(sorted(tuning.items()))


_UNKNOWN = object()


def try_fp32_layernorm_single_pass(
    x: torch.Tensor,
    normalized_shape: Tuple[int, ...],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    check: Optional[Callable] = None,
) -> Optional[torch.Tensor]:
    """One pass over ``x`` where a path is proven here; ``None`` otherwise.

    ``check(x, normalized_shape)`` vets the operands the first time their
    configuration (the runner key: types, shapes, strides, dtypes, devices,
    alignments, eps, ``normalized_shape``) is seen and raises on bad ones;
    calls with a stored configuration skip it, so it may only look at what the
    key holds.
    """
    if not isinstance(x, torch.Tensor):
        if check is not None:
            check(x, normalized_shape)
        return None
    shape = tuple(normalized_shape)
    key = _runner_key((eps, shape), x, weight, bias)
    run = _RUNNERS.get(key, _UNKNOWN)
    if run is _UNKNOWN:
        if check is not None:
            check(x, shape)
        run, final = _single_pass_runner(x, shape, weight, bias, eps)
        if final:
            _remember(key, run)
    return None if run is None else run(x, weight, bias, eps)


def fused_layernorm_path(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
) -> str:
    """``"triton"`` where the fused kernel may replace the eager chain (grad
    off, not compiling), else ``"native"``."""
    if (
        _FORCE_REFERENCE
        or x.numel() < _TRITON_MIN_ELEMENTS
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()
    ):
        return "native"
    if not can_use_fused_layernorm_scale_shift_bitexact(
        x, weight, bias, scale, shift, residual, gate
    ):
        return "native"
    return "triton"


def _per_frame(x: torch.Tensor, t: torch.Tensor, fn):
    """Apply ``fn(x_frames, t)`` with ``t`` of shape ``[B, F, 1, D]`` per frame."""
    num_frames = t.shape[1]
    if x.dim() != 3 or x.shape[1] % num_frames != 0:
        raise ValueError(
            f"per-frame modulation of shape {tuple(t.shape)} needs an input "
            f"[B, L, D] with L divisible by {num_frames}, got {tuple(x.shape)}"
        )
    frames = x.unflatten(dim=1, sizes=(num_frames, x.shape[1] // num_frames))
    return fn(frames, t).flatten(1, 2)


def _as_bld(t: torch.Tensor) -> torch.Tensor:
    # a 2-D modulation is per batch, [B, D] -> [B, 1, D], as upstream's kernels read it
    return t.unsqueeze(1) if t.dim() == 2 else t


def gated_residual(residual: torch.Tensor, x: torch.Tensor, gate) -> torch.Tensor:
    """``residual + x * gate`` (eager) for the int 1, a scalar, ``[D]``,
    ``[B, D]``, ``[B|1, L|1, D]`` or per-frame ``[B, F, 1, D]`` gate."""
    if isinstance(gate, bool) or not isinstance(gate, (int, torch.Tensor)):
        raise TypeError(f"Gate type {type(gate).__name__} not supported")
    if isinstance(gate, int):
        if gate != 1:
            raise ValueError(
                f"Only gate value of 1 is supported for int type, but got {gate}"
            )
        return residual + x
    if gate.dim() == 4:
        return residual + _per_frame(x, gate, torch.mul)
    return residual + x * _as_bld(gate)


def modulate(
    normalized: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``normalized * (1 + scale) + shift`` (eager), per frame for ``[B, F, 1, D]``."""
    scale, shift = _as_bld(scale), _as_bld(shift)
    if scale.dim() == 4:
        shift_frames = shift if shift.dim() == 4 else None

        def mod(frames, s):
            out = frames * (1 + s)
            return out if shift_frames is None else out + shift_frames

        out = _per_frame(normalized, scale, mod)
        return out if shift_frames is not None else out + shift
    if shift.dim() == 4:
        return _per_frame(normalized * (1 + scale), shift, torch.add)
    return normalized * (1 + scale) + shift


def norm_scale_shift_chain(norm: Callable, x, shift, scale) -> torch.Tensor:
    """The eager ``LayerNormScaleShift``: ``modulate(norm(x)).to(x.dtype)``."""
    return modulate(norm(x), scale, shift).to(x.dtype)


def scale_residual_norm_scale_shift_chain(
    norm: Callable, residual, x, gate, shift, scale
):
    """The eager ``ScaleResidualLayerNormScaleShift``: ``(modulated, residual_out)``."""
    residual_output = gated_residual(residual, x, gate)
    modulated = modulate(norm(residual_output), scale, shift)
    return modulated.to(x.dtype), residual_output.to(x.dtype)


def _fused_reference(x, weight, bias, eps, residual, gate, scale, shift):
    # the eager chain with the uncached reference LayerNorm
    def norm(t):
        return fp32_layernorm_reference(t, (t.shape[-1],), weight, bias, eps)

    if residual is None:
        return norm_scale_shift_chain(norm, x, shift, scale)
    gate = 1 if gate is None else gate
    return scale_residual_norm_scale_shift_chain(norm, residual, x, gate, shift, scale)


def _fused_runner(x, weight, bias, eps, scale, shift, residual, gate):
    """``(plan or None, final)`` for the fused kernel, as ``_single_pass_runner``."""
    if not can_use_fused_layernorm_scale_shift_bitexact(
        x, weight, bias, scale, shift, residual, gate
    ):
        return None, True
    if not x.is_contiguous() or not (residual is None or residual.is_contiguous()):
        return None, True  # the eager chain reads any layout as fast
    dim = x.shape[-1]
    plan = plan_for(x, weight, bias, eps, residual, gate, scale, shift)
    # the proof runs the kernel variant (kernel and knobs) this call takes
    key = ("fused", x.device, x.dtype, dim, _dtype_of(weight), _dtype_of(bias),
           _dtype_of(residual), _dtype_of(gate), scale.dtype, shift.dtype,
           _variant_key(plan.tuning))  # fmt: skip
    if _PROOFS.verdict(key):
        return plan, True

    def fast(x, weight, bias, eps, residual, gate, scale, shift):
        return _launch_fp32_norm(x, weight, bias, eps, residual=residual,
                                 gate=gate, scale=scale, shift=shift,
                                 tuning=plan.tuning)  # fmt: skip

    def make_inputs():
        gen = torch.Generator(device=x.device).manual_seed(1245)
        rows = 257

        def rnd(dtype):
            return _random_rows(1, rows * dim, dtype, x.device, gen).view(1, rows, dim)

        def mod_like(t):
            return None if t is None else (rnd(t.dtype)[:, :1] * 0.3).contiguous()

        cw, cb = _like(weight, dim, x.device, gen), _like(bias, dim, x.device, gen)
        cres = None if residual is None else rnd(residual.dtype)
        return (rnd(x.dtype), cw, cb, eps, cres, mod_like(gate),
                mod_like(scale), mod_like(shift))  # fmt: skip

    ok = _PROOFS.proven(key, x.device, fast, _fused_reference, make_inputs)
    return (plan if ok else None), _PROOFS.verdict(key) is not None


def try_fused_layernorm_scale_shift(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
):
    """The fused kernel where proven against the eager chain; ``None`` otherwise.

    Returns the modulated output, or ``(modulated, residual_output)`` with a
    residual (``gate=None`` means a gate of 1), as the chain would. Not with
    grad enabled or while compiling (see ``fused_layernorm_path``).
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    key = _runner_key(eps, x, weight, bias, scale, shift, residual, gate)
    plan = _RUNNERS.get(key, _UNKNOWN)
    if plan is _UNKNOWN:
        plan = None
        if not _FORCE_REFERENCE:
            plan, final = _fused_runner(
                x, weight, bias, eps, scale, shift, residual, gate
            )
        else:
            final = True
        if final:
            _remember(key, plan)
    if plan is None:
        return None
    return plan(x, weight, bias, eps, residual, gate, scale, shift)


################################################################################
# torch.compile: opaque ops, so that compiled output equals eager bit for bit
################################################################################
def _opaque(name: str, fn: Callable, fake: Callable):
    # reuse a registration: the module can be loaded twice (the plugin's copy)
    op = getattr(getattr(torch.ops, "sglang", None), name, None)
    if op is not None:
        return op
    op = torch.library.custom_op(f"sglang::{name}", mutates_args=())(fn)
    op.register_fake(fake)
    return op


def _fp32_layernorm_any(
    x: torch.Tensor,
    normalized_shape: list[int],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    shape = tuple(normalized_shape)
    out = try_fp32_layernorm_single_pass(x, shape, weight, bias, eps)
    if out is None:
        out = fp32_layernorm_reference(x, shape, weight, bias, eps)
    return out


def _layernorm_scale_shift_any(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> torch.Tensor:
    out = try_fused_layernorm_scale_shift(x, weight, bias, eps, scale, shift)
    if out is None:
        out = _fused_reference(x, weight, bias, eps, None, None, scale, shift)
    return out


def _scale_residual_layernorm_scale_shift_any(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    scale: torch.Tensor,
    shift: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    out = try_fused_layernorm_scale_shift(
        x, weight, bias, eps, scale, shift, residual=residual, gate=gate
    )
    if out is None:
        out = _fused_reference(x, weight, bias, eps, residual, gate, scale, shift)
    return out


# what FP32LayerNorm and the LayerNorm adaLN modules call while compiling with
# grad off: the best exact path, as one node inductor does not rewrite
fp32_layernorm_opaque = _opaque(
    "mmgen_fp32_layer_norm",
    _fp32_layernorm_any,
    lambda x, normalized_shape, weight, bias, eps: torch.empty_like(x),
)
layernorm_scale_shift_opaque = _opaque(
    "mmgen_layernorm_scale_shift",
    _layernorm_scale_shift_any,
    lambda x, weight, bias, eps, scale, shift: torch.empty_like(x),
)
scale_residual_layernorm_scale_shift_opaque = _opaque(
    "mmgen_scale_residual_layernorm_scale_shift",
    _scale_residual_layernorm_scale_shift_any,
    lambda residual, x, gate, weight, bias, eps, scale, shift: (
        torch.empty_like(x),
        torch.empty_like(x),
    ),
)


__all__ = [
    "FP32_LAYERNORM_REFERENCE_ENV",
    "fp32_layernorm_opaque",
    "gated_residual",
    "layernorm_scale_shift_opaque",
    "modulate",
    "norm_scale_shift_chain",
    "scale_residual_layernorm_scale_shift_opaque",
    "scale_residual_norm_scale_shift_chain",
    "tested_build",
    "ProofRegistry",
    "force_reference",
    "fp32_layernorm_path",
    "fp32_layernorm_reference",
    "fused_layernorm_path",
    "is_capturing",
    "try_fp32_layernorm_single_pass",
    "try_fused_layernorm_scale_shift",
]
