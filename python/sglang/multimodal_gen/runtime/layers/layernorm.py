# SPDX-License-Identifier: Apache-2.0
# Adapted from vLLM's model_executor/layers/layernorm.py via upstream SGLang; the fp32
# parameter cache of FP32LayerNorm is ported from FastVideo PR #1245.
"""Custom normalization layers.

Runs with torch alone. Triton, when importable, adds single-pass CUDA kernels that
are bit-identical to the fp32 reference; everything else takes PyTorch paths.
Unlike upstream, no native path is wrapped in ``torch.compile``: the native paths
are the eager references the CUDA kernels are checked against bit for bit (users
may still compile whole models; FP32LayerNorm stays exact there too).
"""

import math
import threading
import warnings
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef

from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp
from sglang.multimodal_gen.runtime.utils.common import get_bool_env_var

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: CPU-only installs and platforms without Triton
    triton = None
    tl = None

# A/B and debugging switch: every FP32LayerNorm (standalone or inside the fused
# modulation modules) computes the uncached fp32 reference on every call.
FP32_LAYERNORM_REFERENCE_ENV = "SGLANG_DIFFUSION_FP32_LAYERNORM_REFERENCE"
_FORCE_REFERENCE = get_bool_env_var(FP32_LAYERNORM_REFERENCE_ENV)

_REDUCED_FLOAT_DTYPES = (torch.bfloat16, torch.float16)
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# Copied and adapted from sglang
@CustomOp.register("rms_norm")
class RMSNorm(CustomOp):
    """Root mean square normalization: ``w * x / sqrt(mean(x**2) + eps)``.

    Computed in fp32 and returned in the input dtype. See
    https://arxiv.org/abs/1910.07467.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        dtype: torch.dtype = torch.float32,
        var_hidden_size: Optional[int] = None,
        cast_x_before_out_mul: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.hidden_size = hidden_size
        self.cast_x_before_out_mul = cast_x_before_out_mul
        self.variance_size_override = (
            None if var_hidden_size == hidden_size else var_hidden_size
        )

    def forward_native(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if not x.is_contiguous():
            x = x.contiguous()
        orig_dtype = x.dtype
        x = x.to(torch.float32)
        if residual is not None:
            x = x + residual.to(torch.float32)
            residual = x.to(orig_dtype)

        hidden_size = x.shape[-1]
        if hidden_size != self.hidden_size:
            raise ValueError(
                f"Expected hidden_size to be {self.hidden_size}, but found: "
                f"{hidden_size}"
            )
        x_var = x
        if self.variance_size_override is not None:
            if hidden_size < self.variance_size_override:
                raise ValueError(
                    "Expected hidden_size to be at least "
                    f"{self.variance_size_override}, but found: {hidden_size}"
                )
            x_var = x[..., : self.variance_size_override]

        variance = x_var.pow(2).mean(dim=-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.cast_x_before_out_mul:
            x = self.weight * x.to(orig_dtype)
        else:
            x = (x * self.weight).to(orig_dtype)
        return x if residual is None else (x, residual)

    def forward_cuda(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        # sgl_kernel's fused RMSNorm is not a dependency of this tree
        return self.forward_native(x, residual)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, eps={self.variance_epsilon}"


# Copied and adapted from sglang
@CustomOp.register("layer_norm")
class LayerNorm(CustomOp):
    """LayerNorm over the last dimension, computed in the input dtype."""

    def __init__(
        self,
        hidden_size: int,
        eps=1e-5,
        bias: bool = True,
        elementwise_affine=True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.hidden_size = hidden_size
        factory_kwargs = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, **factory_kwargs))
            self.bias = (
                nn.Parameter(torch.zeros(hidden_size, **factory_kwargs))
                if bias
                else None
            )
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward_native(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        input_dtype = x.dtype
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        x = (x - mean) * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            x = self.weight * x
        if self.bias is not None:
            x = x + self.bias
        return x.to(input_dtype)

    def forward_cuda(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        return self.forward_native(x, residual)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, eps={self.eps}"


class ScaleResidual(nn.Module):
    """Gated residual connection: ``residual + x * gate``."""

    def __init__(self, prefix: str = ""):
        super().__init__()

    def forward(
        self, residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        return _gated_residual(residual, x, gate)


################################################################################
# FP32LayerNorm: validation, reference and the fp32 parameter cache
################################################################################
def _check_layer_norm_input(x: torch.Tensor, normalized_shape: Tuple[int, ...]) -> None:
    """Reject inputs the reference would reject late or answer wrongly."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"FP32LayerNorm expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"FP32LayerNorm expects a floating-point input, got dtype {x.dtype}"
        )
    shape = tuple(normalized_shape)
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        raise ValueError(
            f"FP32LayerNorm input of shape {tuple(x.shape)} does not end with "
            f"normalized_shape {shape}"
        )


def _as_fp32(
    param: Optional[torch.Tensor], device: torch.device
) -> Optional[torch.Tensor]:
    return None if param is None else param.float().to(device=device)


def _fp32_layer_norm(
    x: torch.Tensor,
    normalized_shape: Tuple[int, ...],
    weight32: Optional[torch.Tensor],
    bias32: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """LayerNorm in fp32 with fp32 parameters, returned in ``x.dtype``."""
    return F.layer_norm(x.float(), normalized_shape, weight32, bias32, eps).to(x.dtype)


def reference_fp32_layer_norm(
    x: torch.Tensor,
    normalized_shape: Tuple[int, ...],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """The uncached reference every FP32LayerNorm path is bit-identical to."""
    device = x.device
    return _fp32_layer_norm(
        x,
        tuple(normalized_shape),
        _as_fp32(weight, device),
        _as_fp32(bias, device),
        eps,
    )


def _fp32_cache_key(param: torch.Tensor, device: torch.device) -> Optional[tuple]:
    """Identity of ``param``'s current contents as far as torch can tell.

    ``(storage id, data_ptr, _version, param.device, device, dtype, shape, stride)``.
    The storage id is the address of the StorageImpl; the cache entry also holds a
    weak reference to that storage, which keeps the StorageImpl's address from
    being reused while the entry lives, so equal ids mean the same storage.

    Returns ``None`` for tensors without a version counter: inference tensors,
    whose in-place writes under ``torch.inference_mode()`` no key can see, and
    parameters that were created under inference mode and later re-pointed
    outside it (``module.to``, ``p.data = t``), which keep a counter-less impl.
    """
    if param.is_inference():
        return None
    try:
        version = param._version
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None
    return (
        param.untyped_storage()._cdata,
        param.data_ptr(),
        version,
        param.device,
        device,
        param.dtype,
        param.shape,
        param.stride(),
    )


def _canonical_device(device) -> torch.device:
    # "cuda" and "cuda:0" name the same device but compare unequal
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _is_capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


################################################################################
# CUDA single-pass paths (bit-identical to the reference; see _ProofRegistry)
################################################################################
if triton is not None:

    @triton.jit
    def _round_to(v, CODE: tl.constexpr):
        # round an fp32 value to the dtype PyTorch would store it in (0: fp32)
        if CODE == 1:
            v = v.to(tl.bfloat16).to(tl.float32)
        elif CODE == 2:
            v = v.to(tl.float16).to(tl.float32)
        return v

    @triton.jit
    def _load_modulation(ptr, bi, li, cols, mask, stride_b, stride_f, stride_d, frame):
        # a [B, F, D] view broadcast over the L rows of a batch, F = L // frame
        offs = bi * stride_b + (li // frame) * stride_f + cols * stride_d
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _norm_input_tile(
        X,
        RES,
        GATE,
        row,
        bi,
        li,
        cols,
        mask,
        stride_x,
        stride_res,
        g_sb,
        g_sf,
        g_sd,
        g_frame,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
    ):
        # the values the norm sees: x, or residual + x * gate rounded as eager would
        v = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            if HAS_GATE:
                g = _load_modulation(
                    GATE, bi, li, cols, mask, g_sb, g_sf, g_sd, g_frame
                )
                v = _round_to(v * g, G1_RND)
            res = tl.load(RES + row * stride_res + cols, mask=mask, other=0.0)
            v = _round_to(res.to(tl.float32) + v, R_RND)
        return v

    @triton.jit
    def _welford_update(val, mean, m2, active, rcp, FMA: tl.constexpr):
        # ATen's cuWelfordOnlineSum; rcp is 1/count rounded as nvcc's division is
        delta = val - mean
        if FMA:
            new_mean = tl.fma(delta, rcp, mean)
            new_m2 = tl.fma(delta, val - new_mean, m2)
        else:
            new_mean = mean + delta * rcp
            new_m2 = m2 + delta * (val - new_mean)
        return tl.where(active, new_mean, mean), tl.where(active, new_m2, m2)

    @triton.jit
    def _welford_merge(
        b_mean,
        b_m2,
        b_n,
        a_mean,
        a_m2,
        a_n,
        MEAN_FMA: tl.constexpr,
        M2_FMA: tl.constexpr,
    ):
        # ATen's cuWelfordCombine(dataB=receiving lane, dataA=incoming lane)
        delta = b_mean - a_mean
        n = a_n + b_n
        coef = tl.math.div_rn(tl.full(n.shape, 1.0, tl.float32), n)
        n_a = a_n * coef
        n_b = b_n * coef
        if MEAN_FMA == 0:
            mean = tl.fma(n_a, a_mean, n_b * b_mean)
        elif MEAN_FMA == 1:
            mean = tl.fma(n_b, b_mean, n_a * a_mean)
        else:
            mean = n_a * a_mean + n_b * b_mean
        if M2_FMA:
            m2 = tl.fma(delta * delta * a_n, n_b, a_m2 + b_m2)
        else:
            m2 = a_m2 + b_m2 + delta * delta * a_n * n_b
        nonempty = n > 0.0
        return tl.where(nonempty, mean, 0.0), tl.where(nonempty, m2, 0.0), n

    @triton.jit
    def _merge_from(
        mean,
        m2,
        n,
        src,
        AXIS: tl.constexpr,
        MEAN_FMA: tl.constexpr,
        M2_FMA: tl.constexpr,
    ):
        # every lane receives lane src[lane] (a shfl_down / shared-memory read)
        return _welford_merge(
            mean, m2, n,
            tl.gather(mean, src, AXIS), tl.gather(m2, src, AXIS), tl.gather(n, src, AXIS),
            MEAN_FMA, M2_FMA,
        )  # fmt: skip

    @triton.jit
    def _merge_lanes(mean, m2, n, lanes, MEAN_FMA: tl.constexpr, M2_FMA: tl.constexpr):
        # ATen's order: shfl_down 16..1 inside each warp, then warps 0+2, 1+3 and
        # 0+1. Lanes other than 0 also merge (wrapped partners) but lane 0 never
        # reads them, and only lane 0's result is used. As [4, 32] the in-warp
        # gathers are warp-local, which Triton lowers to shuffles; reshape/split
        # halvings instead got layouts replicated in every thread (255 registers,
        # 3.7x the copy floor at D=5120).
        mean = tl.reshape(mean, (4, 32))
        m2 = tl.reshape(m2, (4, 32))
        n = tl.reshape(n, (4, 32))
        lane = tl.reshape(lanes, (4, 32)) % 32
        for shift in tl.static_range(5):
            src = (lane + (16 >> shift)) % 32
            mean, m2, n = _merge_from(mean, m2, n, src, 1, MEAN_FMA, M2_FMA)
        mean = tl.reshape(mean, (128,))
        m2 = tl.reshape(m2, (128,))
        n = tl.reshape(n, (128,))
        mean, m2, n = _merge_from(mean, m2, n, (lanes + 64) % 128, 0, MEAN_FMA, M2_FMA)
        mean, m2, n = _merge_from(mean, m2, n, (lanes + 32) % 128, 0, MEAN_FMA, M2_FMA)
        # broadcast lane 0
        first = lanes * 0
        return tl.gather(mean, first, 0), tl.gather(m2, first, 0)

    @triton.jit
    def _welford_tile(
        X, RES, GATE, RCP, k, row, bi, li, lanes, vec, mean, m2, n,
        stride_x, stride_res, g_sb, g_sf, g_sd, g_frame,
        N: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
        ONLINE_FMA: tl.constexpr,
        CONST_K: tl.constexpr,
    ):  # fmt: skip
        # iteration k of ATen's per-thread loop: lane t takes vector k * 128 + t
        vidx = k * 128 + lanes
        active = vidx < N // 4
        cols = vidx[:, None] * 4 + vec[None, :]
        v = _norm_input_tile(
            X, RES, GATE, row, bi, li, cols, active[:, None], stride_x,
            stride_res, g_sb, g_sf, g_sd, g_frame, HAS_RESIDUAL, HAS_GATE,
            G1_RND, R_RND,
        )  # fmt: skip
        v02, v13 = tl.split(tl.reshape(v, (128, 2, 2)))
        v0, v2 = tl.split(v02)
        v1, v3 = tl.split(v13)
        if CONST_K:
            # unrolled: 1/count folds to a constant, rounded once to fp32
            r0 = 1.0 / (4 * k + 1)
            r1 = 1.0 / (4 * k + 2)
            r2 = 1.0 / (4 * k + 3)
            r3 = 1.0 / (4 * k + 4)
        else:
            r0 = tl.load(RCP + 4 * k)
            r1 = tl.load(RCP + 4 * k + 1)
            r2 = tl.load(RCP + 4 * k + 2)
            r3 = tl.load(RCP + 4 * k + 3)
        mean, m2 = _welford_update(v0, mean, m2, active, r0, ONLINE_FMA)
        mean, m2 = _welford_update(v1, mean, m2, active, r1, ONLINE_FMA)
        mean, m2 = _welford_update(v2, mean, m2, active, r2, ONLINE_FMA)
        mean, m2 = _welford_update(v3, mean, m2, active, r3, ONLINE_FMA)
        n = tl.where(active, (k + 1) * 4.0, n)
        return mean, m2, n

    @triton.jit
    def _fp32_norm_kernel(
        X,
        RES,
        GATE,
        W,
        B,
        SCALE,
        SHIFT,
        Y,
        RES_OUT,
        MEAN,
        RSTD,
        RCP,
        stride_x,
        stride_res,
        stride_y,
        stride_res_out,
        L,
        g_sb,
        g_sf,
        g_sd,
        g_frame,
        sc_sb,
        sc_sf,
        sc_sd,
        sc_frame,
        sh_sb,
        sh_sf,
        sh_sd,
        sh_frame,
        eps,
        N: tl.constexpr,
        ITERS: tl.constexpr,
        HAS_RESIDUAL: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_W: tl.constexpr,
        HAS_B: tl.constexpr,
        HAS_MOD: tl.constexpr,
        STORE_STATS: tl.constexpr,
        G1_RND: tl.constexpr,
        R_RND: tl.constexpr,
        S_RND: tl.constexpr,
        M1_RND: tl.constexpr,
        M_RND: tl.constexpr,
        ONLINE_FMA: tl.constexpr,
        MERGE_MEAN_FMA: tl.constexpr,
        MERGE_M2_FMA: tl.constexpr,
        OUT_FMA: tl.constexpr,
        DYN_LOOP: tl.constexpr,
    ):
        """One row per program: [residual + gate * x ->] fp32 LayerNorm [-> modulate].

        The statistics replay ATen's vectorized CUDA LayerNorm exactly: 128 lanes,
        lane t owns 4-element vectors t, t + 128, ... and runs a sequential Welford
        over them; lanes then merge in the order of its warp shuffles (offsets 16..1)
        and its shared-memory step over the 4 warps. Same operations, same order,
        same FMA contractions, so the same bits.
        """
        row = tl.program_id(0).to(tl.int64)
        bi = row // L
        li = row % L
        lanes = tl.arange(0, 128)
        vec = tl.arange(0, 4)

        mean = tl.zeros([128], dtype=tl.float32)
        m2 = tl.zeros([128], dtype=tl.float32)
        n = tl.zeros([128], dtype=tl.float32)
        if DYN_LOOP:
            for k in range(ITERS):
                mean, m2, n = _welford_tile(
                    X, RES, GATE, RCP, k, row, bi, li, lanes, vec, mean, m2, n,
                    stride_x, stride_res, g_sb, g_sf, g_sd, g_frame, N,
                    HAS_RESIDUAL, HAS_GATE, G1_RND, R_RND, ONLINE_FMA, False,
                )  # fmt: skip
        else:
            for k in tl.static_range(ITERS):
                mean, m2, n = _welford_tile(
                    X, RES, GATE, RCP, k, row, bi, li, lanes, vec, mean, m2, n,
                    stride_x, stride_res, g_sb, g_sf, g_sd, g_frame, N,
                    HAS_RESIDUAL, HAS_GATE, G1_RND, R_RND, ONLINE_FMA, True,
                )  # fmt: skip

        mean, m2 = _merge_lanes(mean, m2, n, lanes, MERGE_MEAN_FMA, MERGE_M2_FMA)
        var = tl.math.div_rn(m2, tl.full(m2.shape, N, tl.float32))
        rstd = tl.math.rsqrt(var + eps)
        if STORE_STATS:
            tl.store(MEAN + row + lanes, mean, mask=lanes == 0)
            tl.store(RSTD + row + lanes, rstd, mask=lanes == 0)
        mean = mean[:, None]
        rstd = rstd[:, None]

        for k in tl.range(ITERS, loop_unroll_factor=1 if DYN_LOOP else ITERS):
            vidx = k * 128 + lanes
            cols = vidx[:, None] * 4 + vec[None, :]
            mask = (vidx < N // 4)[:, None]
            v = _norm_input_tile(
                X, RES, GATE, row, bi, li, cols, mask, stride_x, stride_res,
                g_sb, g_sf, g_sd, g_frame, HAS_RESIDUAL, HAS_GATE, G1_RND, R_RND,
            )  # fmt: skip
            centered = v - mean
            if HAS_W:
                w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                out = w * (rstd * centered)
                if HAS_B:
                    bias = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
                    if OUT_FMA:
                        out = tl.fma(w, rstd * centered, bias)
                    else:
                        out = out + bias
            elif HAS_B:
                # measured: ATen's build does not contract this one
                bias = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
                out = rstd * centered + bias
            else:
                out = rstd * centered
            # FP32LayerNorm hands the modulation its output in the norm's input dtype
            out = _round_to(out, R_RND)
            if HAS_MOD:
                sc = _load_modulation(
                    SCALE, bi, li, cols, mask, sc_sb, sc_sf, sc_sd, sc_frame
                )
                sh = _load_modulation(
                    SHIFT, bi, li, cols, mask, sh_sb, sh_sf, sh_sd, sh_frame
                )
                out = _round_to(out * _round_to(sc + 1.0, S_RND), M1_RND)
                out = _round_to(out + sh, M_RND)
            tl.store(Y + row * stride_y + cols, out.to(Y.dtype.element_ty), mask=mask)
            if HAS_RESIDUAL:
                tl.store(
                    RES_OUT + row * stride_res_out + cols,
                    v.to(RES_OUT.dtype.element_ty),
                    mask=mask,
                )


# How nvcc contracted ATen's LayerNorm expressions into FMAs (cuWelfordOnlineSum,
# cuWelfordCombine's mean (0: first product fused, 1: second, 2: none) and M2,
# and ``gamma * (rstd * (x - mean)) + beta``). Found by
# scripts/aten_layernorm_replay.py on H100/H200 with torch 2.11 (cu130); the
# proof registry re-checks them on every other build before they are used.
_ATEN_REPLAY = {
    "ONLINE_FMA": True,
    "MERGE_MEAN_FMA": 0,
    "MERGE_M2_FMA": True,
    "OUT_FMA": True,
}

# Performance knob of _fp32_norm_kernel; it changes no result bit (checked
# against the reference by scripts/bench_norm_kernel_tuning.py, the unit tests
# and the proof registry). DYN_LOOP: runtime loops (fewest registers) instead of
# static unrolls (all of a row's loads in flight at once); the unrolled kernel
# was 1.07-1.12x the copy floor against 1.16-1.19x at D=5120 (H200, run 2).
_KERNEL_TUNING = {"DYN_LOOP": False}

# Below this many elements the Triton launch itself (tens of microseconds of
# Python-side argument binding for ~45 arguments, measured on H200 with Triton
# 3.6) costs more than the three ATen kernels of the cached path or the eager
# modulation chain, so those (equally exact) paths are used instead.
_TRITON_MIN_ELEMENTS = 1 << 22

# rows of at most this many elements fit the kernel's unrolled per-lane loop
_KERNEL_MAX_D = 8192
_ROUNDING_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


_RECIPROCALS: dict = {}


def _reciprocals(device: torch.device) -> torch.Tensor:
    """``1 / k`` for k = 1.._KERNEL_MAX_D in fp32, each correctly rounded.

    Built on the device with an IEEE division (PyTorch is not built with fast
    math), so each entry equals the ``1.f / count`` ATen's kernel computes.
    """
    table = _RECIPROCALS.get(device)
    if table is None:
        count = torch.arange(1, _KERNEL_MAX_D + 1, device=device, dtype=torch.float32)
        table = _RECIPROCALS.setdefault(device, 1.0 / count)
    return table


def _kernel_shape_ok(d: int) -> bool:
    # ATen takes its vectorized (and so replayable) path only for D % 4 == 0
    return 0 < d <= _KERNEL_MAX_D and d % 4 == 0


def _aligned(t: Optional[torch.Tensor], nbytes: int) -> bool:
    return t is None or t.data_ptr() % nbytes == 0


class _Modulation:
    """A modulation tensor as a broadcast ``[B, F, D]`` view plus ``frame = L // F``.

    Accepts the layouts the fused modules take: a scalar, ``[D]``, ``[B|1, D]``,
    ``[B|1, L|1, D|1]`` and per-frame ``[B, F, 1, D]`` (``L % F == 0``).
    """

    __slots__ = ("tensor", "strides", "frame", "dtype")

    @classmethod
    def of(cls, t, batch: int, seq_len: int, dim: int) -> "_Modulation":
        return t if isinstance(t, cls) else cls(t, batch, seq_len, dim)

    def __init__(self, t: torch.Tensor, batch: int, seq_len: int, dim: int):
        self.dtype = t.dtype
        if t.numel() == 1:
            v = t.reshape(1, 1, 1)
        elif t.dim() == 1:
            v = t.reshape(1, 1, -1)
        elif t.dim() == 2:
            v = t.unsqueeze(1)
        elif t.dim() == 3:
            v = t
        elif t.dim() == 4 and t.shape[2] == 1:
            v = t.squeeze(2)
        else:
            raise ValueError(f"unsupported modulation shape {tuple(t.shape)}")
        frames = v.shape[1]
        per_frame = t.dim() == 4
        if frames not in (1, seq_len) and not (per_frame and seq_len % frames == 0):
            raise ValueError(
                f"modulation of shape {tuple(t.shape)} does not broadcast over a "
                f"sequence of length {seq_len}"
            )
        try:
            v = v.expand(batch, frames, dim)
        except RuntimeError as exc:
            raise ValueError(
                f"modulation of shape {tuple(t.shape)} does not broadcast to "
                f"[{batch}, {seq_len}, {dim}]"
            ) from exc
        self.tensor = v
        self.strides = v.stride()
        self.frame = max(seq_len // frames, 1)


def _launch_spec(t: torch.Tensor) -> tuple:
    # what Triton 3.x specializes a pointer argument on
    return (t.dtype, t.data_ptr() % 16 == 0)


def _launch_hooks_set() -> bool:
    # Triton 3.6 keeps its launch hooks in (normally empty) HookChains
    runtime = triton.knobs.runtime
    hooks = (runtime.launch_enter_hook, runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


class _KernelLauncher:
    """Launch ``_fp32_norm_kernel`` without Triton's per-call argument binding.

    Binding and specializing ~45 arguments costs tens of microseconds of host
    time per call (more than the GPU needs at Wan's mid sizes). The first launch
    of each specialization goes through ``kernel[grid](...)``, which compiles
    and returns the compiled kernel; later launches with the same key call its
    launcher directly, as Triton itself does after binding.

    Invariant: the key holds at least everything Triton 3.x specializes on
    (device, each tensor's dtype and 16-byte alignment, every int's value, every
    constexpr; only the float ``eps`` is left out, which Triton does not
    specialize on), so equal keys mean the same compiled kernel. A finer key only
    costs one more Triton-path launch. ``test_kernel_launcher_key_covers_triton_
    specialization`` checks the tensor part against Triton's own binder. It cannot
    see Triton versions whose launcher or specialization rules differ: only the
    versions in ``_VERIFIED`` use it, and launch hooks (profilers) always take
    Triton's path. Distinct keys are bounded by ``_MAX_KEYS`` (then it starts over).
    """

    _MAX_KEYS = 4096

    _VERIFIED = ("3.6",)

    def __init__(self) -> None:
        self._kernels: dict = {}
        version = getattr(triton, "__version__", "") if triton is not None else ""
        # not under TRITON_INTERPRET=1, where the kernel is interpreted on the CPU
        self.enabled = version.startswith(self._VERIFIED) and isinstance(
            globals().get("_fp32_norm_kernel"), triton.runtime.JITFunction
        )

    def launch(self, rows: int, args: tuple, constexprs: dict) -> None:
        fn = _fp32_norm_kernel
        if not self.enabled or _launch_hooks_set():
            fn[(rows,)](*args, **constexprs, **_KERNEL_OPTIONS)
            return
        driver = triton.runtime.driver.active
        device = driver.get_current_device()
        n_ptr = _N_POINTER_ARGS
        key = (
            device,
            tuple(map(_launch_spec, args[:n_ptr])),
            args[n_ptr:-1],
            tuple(constexprs.items()),
        )
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = fn[(rows,)](*args, **constexprs, **_KERNEL_OPTIONS)
            if len(self._kernels) >= self._MAX_KEYS:
                self._kernels.clear()
            self._kernels[key] = kernel
            return
        tail = [constexprs[name] for name in fn.arg_names[len(args) :]]
        kernel.run(
            rows, 1, 1, driver.get_current_stream(device), kernel.function,
            kernel.packed_metadata, None, None, None, *args, *tail,
        )  # fmt: skip


# _fp32_norm_kernel's arguments: 12 pointers, then ints, then eps
_N_POINTER_ARGS = 12
# only the FMAs written out in the kernel may fuse, as in ATen's build
_KERNEL_OPTIONS = {"num_warps": 4, "enable_fp_fusion": False}
_LAUNCHER = _KernelLauncher()


def _launch_fp32_norm(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    *,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    store_stats: bool = False,
    replay: Optional[dict] = None,
    tuning: Optional[dict] = None,
):
    """Launch ``_fp32_norm_kernel`` on ``x`` of shape ``[B, L, D]`` (or ``[M, D]``).

    Output dtypes are ``x.dtype``. Intermediate roundings follow PyTorch's type
    promotion of the eager chain, so callers get the bits the eager ops give.
    Returns ``y`` or ``(y, residual_out)``, plus ``(mean, rstd)`` if asked.
    """
    # host time matters here: at Wan's mid sizes a launch costs about what the
    # GPU needs, so views are only made where the shape needs them
    out_shape = x.shape
    if x.dim() == 2:
        batch, (seq_len, dim) = 1, out_shape
        x2 = x
    else:
        batch, seq_len, dim = out_shape
        x2 = x.view(batch * seq_len, dim) if x.is_contiguous() else x.reshape(-1, dim)
    rows = batch * seq_len
    x2 = x2 if x2.is_contiguous() else x2.contiguous()
    y = torch.empty_like(x2)

    def code(dtype: torch.dtype) -> int:
        return _ROUNDING_CODE[dtype]

    r_dtype = x.dtype
    g1_dtype = x.dtype
    res2 = res_out = None
    mods = {}
    if residual is not None:
        res2 = residual.reshape(rows, dim).contiguous()
        res_out = torch.empty_like(x2)
        if gate is not None:
            mods["g"] = _Modulation.of(gate, batch, seq_len, dim)
            g1_dtype = torch.promote_types(x.dtype, mods["g"].dtype)
        r_dtype = torch.promote_types(residual.dtype, g1_dtype)
    s_dtype = m1_dtype = m_dtype = r_dtype
    if scale is not None:
        mods["sc"] = _Modulation.of(scale, batch, seq_len, dim)
        mods["sh"] = _Modulation.of(shift, batch, seq_len, dim)
        s_dtype = mods["sc"].dtype
        m1_dtype = torch.promote_types(r_dtype, s_dtype)
        m_dtype = torch.promote_types(m1_dtype, mods["sh"].dtype)
    stats = (
        torch.empty(rows, device=x.device, dtype=torch.float32) if store_stats else None
    )
    rstd = torch.empty_like(stats) if store_stats else None

    def mod_args(key):
        m = mods.get(key)
        if m is None:
            return (x2, 0, 0, 0, 1)
        return (m.tensor, *m.strides, m.frame)

    g_t, g_sb, g_sf, g_sd, g_frame = mod_args("g")
    sc_t, sc_sb, sc_sf, sc_sd, sc_frame = mod_args("sc")
    sh_t, sh_sb, sh_sf, sh_sd, sh_frame = mod_args("sh")
    if rows > 0:
        args = (
            x2,
            x2 if res2 is None else res2,
            g_t,
            x2 if weight is None else weight,
            x2 if bias is None else bias,
            sc_t,
            sh_t,
            y,
            y if res_out is None else res_out,
            y if stats is None else stats,
            y if rstd is None else rstd,
            _reciprocals(x.device),
            x2.stride(0),
            0 if res2 is None else res2.stride(0),
            y.stride(0),
            0 if res_out is None else res_out.stride(0),
            seq_len,
            g_sb,
            g_sf,
            g_sd,
            g_frame,
            sc_sb,
            sc_sf,
            sc_sd,
            sc_frame,
            sh_sb,
            sh_sf,
            sh_sd,
            sh_frame,
            eps,
        )
        constexprs = dict(
            N=dim,
            ITERS=(dim // 4 + 127) // 128,
            HAS_RESIDUAL=res2 is not None,
            HAS_GATE="g" in mods,
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            HAS_MOD=scale is not None,
            STORE_STATS=store_stats,
            G1_RND=code(g1_dtype),
            R_RND=code(r_dtype),
            S_RND=code(s_dtype),
            M1_RND=code(m1_dtype),
            M_RND=code(m_dtype),
            **(_ATEN_REPLAY if replay is None else replay),
            **(_KERNEL_TUNING if tuning is None else tuning),
        )
        _LAUNCHER.launch(rows, args, constexprs)
    out = y if x.dim() == 2 else y.view(out_shape)
    result = out if res_out is None else (out, res_out.view(out_shape))
    if store_stats:
        return result, (stats, rstd)
    return result


class _ProofRegistry:
    """Per-process record of which fast paths matched the reference here.

    A fast path is taken only after it reproduced the reference bit for bit on
    this device and torch build, on random inputs of the configuration at hand
    (checked on first use, outside CUDA graph capture). A mismatch disables that
    configuration for the process with one warning. The unit tests run the same
    comparison over a wide sweep; this guards builds the tests never saw.
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
        if _is_capturing(device):
            return False
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
        ok = all(
            a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(fast, ref)
        ) and len(fast) == len(ref)
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


_PROOFS = _ProofRegistry()


def _random_like_row(
    rows: int, dim: int, dtype: torch.dtype, device: torch.device, gen
) -> torch.Tensor:
    # an offset mean and uneven scale exercise the centring, not just the scaling
    t = torch.randn(rows, dim, generator=gen, device=device, dtype=torch.float32)
    return (t * 3.0 + 0.5).to(dtype)


def _calibration_params(weight, bias, dim, device, gen):
    def like(p):
        if p is None:
            return None
        return torch.randn(dim, generator=gen, device=device).to(p.dtype)

    return like(weight), like(bias)


def fp32_layer_norm_path(
    x: torch.Tensor,
    normalized_shape: Tuple[int, ...],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> str:
    """Name the path FP32LayerNorm takes for these operands when grad is off.

    ``"triton"``: CUDA, bf16/fp16 input of at least ``_TRITON_MIN_ELEMENTS``
    elements and a 1-D ``normalized_shape`` the kernel replays (D % 4 == 0,
    D <= 8192), parameters absent, in the input dtype, or fp32 and 16-byte
    aligned: ``_fp32_norm_kernel``. ``"aten_reduced"``: other CUDA bf16/fp16
    inputs with parameters absent or in the input dtype, all aligned: ATen's
    reduced-precision kernel, which computes in fp32 internally in the same
    order as the fp32 kernel. ``"cached"``: everything else (CPU, fp32 input,
    misaligned or mixed operands): cached fp32 parameter copies and
    ``F.layer_norm`` on ``x.float()``. ``"reference"``: the env switch is set.

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
    if (
        triton is not None
        and len(normalized_shape) == 1
        and x.numel() >= _TRITON_MIN_ELEMENTS
        and _kernel_shape_ok(normalized_shape[0])
        and all(
            p.dtype == x.dtype or (p.dtype == torch.float32 and _aligned(p, 16))
            for p in params
        )
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


def _triton_layer_norm(x, normalized_shape, weight, bias, eps):
    y = _launch_fp32_norm(x.reshape(-1, normalized_shape[-1]), weight, bias, eps)
    return y.view(x.shape)


_SINGLE_PASS = {"aten_reduced": F.layer_norm, "triton": _triton_layer_norm}


def _single_pass_fp32_layer_norm(
    x: torch.Tensor,
    normalized_shape: Tuple[int, ...],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
) -> Optional[torch.Tensor]:
    """One pass over ``x`` where a path is proven here; ``None`` otherwise."""
    path = fp32_layer_norm_path(x, normalized_shape, weight, bias)
    fast = _SINGLE_PASS.get(path)
    if fast is None:
        return None
    shape = tuple(normalized_shape)
    key = (path, x.device, x.dtype, shape, _dtype_of(weight), _dtype_of(bias))
    if not _PROOFS.verdict(key):

        def make_inputs():
            gen = torch.Generator(device=x.device).manual_seed(1245)
            rows, dim = 257, math.prod(shape)
            cx = _random_like_row(rows, dim, x.dtype, x.device, gen)
            cw, cb = _calibration_params(weight, bias, dim, x.device, gen)
            cw = None if cw is None else cw.view(shape)
            cb = None if cb is None else cb.view(shape)
            return cx.view(rows, *shape), shape, cw, cb, eps

        if not _PROOFS.proven(
            key, x.device, fast, reference_fp32_layer_norm, make_inputs
        ):
            return None
    return fast(x, shape, weight, bias, eps)


def _dtype_of(t: Optional[torch.Tensor]) -> Optional[torch.dtype]:
    return None if t is None else t.dtype


################################################################################
# torch.compile: an opaque op keeps compiled output equal to eager
################################################################################
def _fp32_layer_norm_uncached(x, normalized_shape, weight, bias, eps):
    # the env switch already routes fp32_layer_norm_path to "reference"
    shape = tuple(normalized_shape)
    out = _single_pass_fp32_layer_norm(x, shape, weight, bias, eps)
    if out is not None:
        return out
    return reference_fp32_layer_norm(x, shape, weight, bias, eps)


try:
    _compiled_fp32_layer_norm = torch.ops.sglang.mmgen_fp32_layer_norm
except AttributeError:

    @torch.library.custom_op("sglang::mmgen_fp32_layer_norm", mutates_args=())
    def _compiled_fp32_layer_norm(
        x: torch.Tensor,
        normalized_shape: list[int],
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        eps: float,
    ) -> torch.Tensor:
        return _fp32_layer_norm_uncached(x, normalized_shape, weight, bias, eps)

    @_compiled_fp32_layer_norm.register_fake
    def _(x, normalized_shape, weight, bias, eps):
        return x.new_empty(x.shape)


# adapted from Diffusers: https://github.com/huggingface/diffusers/blob/main/src/diffusers/models/normalization.py
# NOTE(will): Needed to match behavior of diffusers and wan2.1 even while using
# FSDP's MixedPrecisionPolicy
@CustomOp.register("fp32_layer_norm")
class FP32LayerNorm(CustomOp, nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype.

    Every path returns exactly
    ``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)``.
    During inference (grad off) the fp32 parameter copies are cached on the module
    (see ``_cached_fp32_param``); on CUDA, bf16/fp16 inputs take a single pass
    that needs no copies (see ``fp32_layer_norm_path``).
    """

    _FP32_CACHE_ATTRS = {"weight": "_weight_fp32_cache", "bias": "_bias_fp32_cache"}

    def __init__(
        self,
        normalized_shape,
        eps=1e-5,
        elementwise_affine=True,
        bias=True,
        device=None,
        dtype=None,
    ):
        nn.LayerNorm.__init__(
            self,
            normalized_shape=normalized_shape,
            eps=eps,
            elementwise_affine=elementwise_affine,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self._forward_method = self.dispatch_forward()

    def _cached_fp32_param(
        self, attr: str, param: Optional[torch.Tensor], device: torch.device
    ) -> Optional[torch.Tensor]:
        """Return ``param`` as fp32 on ``device``, reusing a copy cached in ``attr``.

        Guarantees: the returned tensor always holds ``param.float().to(device)``
        for every change torch can see. The entry in ``self.__dict__[attr]`` is
        ``(key, StorageWeakRef, fp32 copy)`` with the key of ``_fp32_cache_key``;
        it is rebuilt when the storage is freed or replaced (``p.data = t``,
        ``module.to``), when ``param._version`` moves (in-place ops, ``copy_``,
        ``load_state_dict``), when the parameter is reassigned on the module
        (``setattr``, which is how FSDP2 swaps sharded and unsharded parameters),
        or when the target device or the dtype change. The weak reference never
        keeps a freed parameter's memory alive.

        It bypasses the cache: with grad enabled (plain autograd path), while
        compiling, during CUDA graph capture (the graph then records the cast, so
        replays read the live parameter), for inference tensors, and under the
        reference env switch. fp32 parameters on ``device`` are returned as is.

        It cannot see writes that bypass the version counter: through ``.data`` of
        a view or of the parameter (``p.data.add_(1)``), from raw pointers or
        other processes, or storage refilled in place under
        ``torch.autograd._unsafe_preserve_version_counter`` without a parameter
        reassignment. Such writers must call ``drop_fp32_layer_norm_caches``.
        """
        if param is None:
            return None
        if param.dtype == torch.float32 and param.device == device:
            # what param.float().to(device) returns in every mode, grad included
            return param
        device = _canonical_device(device)
        if (
            torch.is_grad_enabled()
            or _FORCE_REFERENCE
            or torch.compiler.is_compiling()
            or _is_capturing(device)
        ):
            return param.float().to(device=device)
        if param.dtype == torch.float32 and param.device == device:
            return param
        key = _fp32_cache_key(param, device)
        if key is None:
            return param.float().to(device=device)
        entry = self.__dict__.get(attr)
        if entry is not None and entry[0] == key and not entry[1].expired():
            return entry[2]
        fp32 = param.detach().to(device=device, dtype=torch.float32, copy=True)
        self.__dict__[attr] = (key, StorageWeakRef(param.untyped_storage()), fp32)
        return fp32

    def _drop_fp32_cache(self) -> None:
        """Forget the cached fp32 copies (they are rebuilt on the next forward)."""
        for attr in self._FP32_CACHE_ATTRS.values():
            self.__dict__.pop(attr, None)

    def __setattr__(self, name, value) -> None:
        super().__setattr__(name, value)
        attr = self._FP32_CACHE_ATTRS.get(name)
        if attr is not None:
            self.__dict__.pop(attr, None)

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .half(): free copies of parameters that just moved
        self._drop_fp32_cache()
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # copies (deepcopy, pickle, torch.save) start cold, sharing nothing;
        # nn.Module's own state drops compile wrappers and is already a copy
        state = super().__getstate__()
        for attr in self._FP32_CACHE_ATTRS.values():
            state.pop(attr, None)
        return state

    def forward_native(self, inputs: torch.Tensor) -> torch.Tensor:
        _check_layer_norm_input(inputs, self.normalized_shape)
        if torch.compiler.is_compiling() and not torch.is_grad_enabled():
            return _compiled_fp32_layer_norm(
                inputs, list(self.normalized_shape), self.weight, self.bias, self.eps
            )
        device = inputs.device
        weight = self._cached_fp32_param("_weight_fp32_cache", self.weight, device)
        bias = self._cached_fp32_param("_bias_fp32_cache", self.bias, device)
        return _fp32_layer_norm(inputs, self.normalized_shape, weight, bias, self.eps)

    def forward_cuda(self, inputs: torch.Tensor) -> torch.Tensor:
        if not (
            torch.is_grad_enabled() or torch.compiler.is_compiling() or _FORCE_REFERENCE
        ):
            _check_layer_norm_input(inputs, self.normalized_shape)
            out = _single_pass_fp32_layer_norm(
                inputs, self.normalized_shape, self.weight, self.bias, self.eps
            )
            if out is not None:
                return out
        return self.forward_native(inputs)


def drop_fp32_layer_norm_caches(module: nn.Module) -> int:
    """Drop the fp32 parameter caches of every FP32LayerNorm in ``module``.

    For weight writers that bypass the version counter, such as
    ``param.data.copy_(w)`` (upstream's ``update_weights_from_disk`` loader does
    this): call it after the write. Returns how many norms were reset.
    """
    count = 0
    for sub in module.modules():
        if isinstance(sub, FP32LayerNorm):
            sub._drop_fp32_cache()
            count += 1
    return count


################################################################################
# Gated residual and modulation (shared by every path of the fused modules)
################################################################################
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


def _gated_residual(
    residual: torch.Tensor, x: torch.Tensor, gate: Union[torch.Tensor, int]
) -> torch.Tensor:
    """``residual + x * gate`` for the int 1, a scalar, ``[D]``, ``[B, D]``,
    ``[B|1, L|1, D]`` or per-frame ``[B, F, 1, D]`` gate."""
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


def _modulate(
    normalized: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``normalized * (1 + scale) + shift``, per frame for 4-D ``[B, F, 1, D]``."""
    scale, shift = _as_bld(scale), _as_bld(shift)
    if scale.dim() == 4:
        shift_frames = shift if shift.dim() == 4 else None

        def mod(frames, s):
            out = frames * (1 + s)
            if shift_frames is not None:
                return out + shift_frames
            return out

        out = _per_frame(normalized, scale, mod)
        return out if shift_frames is not None else out + shift
    if shift.dim() == 4:
        return _per_frame(normalized * (1 + scale), shift, torch.add)
    return normalized * (1 + scale) + shift


def _fused_kernel_ok(
    norm: nn.Module,
    x: torch.Tensor,
    residual: Optional[torch.Tensor],
    *tensors: Optional[torch.Tensor],
) -> bool:
    """Whether the fused Triton kernel may (and should) replace the eager chain."""
    if x.numel() < _TRITON_MIN_ELEMENTS:
        # measured (H200): below this the launch costs more than the eager
        # chain's kernels, with or without the residual
        return False
    if (
        triton is None
        or _FORCE_REFERENCE
        or torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or not isinstance(norm, FP32LayerNorm)
        or x.device.type != "cuda"
        or x.dim() != 3
        or tuple(norm.normalized_shape) != (x.shape[-1],)
        or not _kernel_shape_ok(x.shape[-1])
    ):
        return False
    for t in (residual, *tensors, norm.weight, norm.bias):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            return False
        if t.device != x.device or t.dtype not in _KERNEL_DTYPES:
            return False
    # the reference hands fp32 parameters to ATen as they are: they must be
    # aligned for its vectorized kernel, which is the one the kernel replays
    return all(
        p is None or p.dtype != torch.float32 or _aligned(p, 16)
        for p in (norm.weight, norm.bias)
    )


def _fused_norm_modulate(
    module: "nn.Module",
    x: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
):
    """Run the fused kernel where proven; ``None`` sends the caller to native."""
    norm = module.norm
    if not _fused_kernel_ok(norm, x, residual, scale, shift, gate):
        return None
    if residual is not None and residual.shape != x.shape:
        return None
    batch, seq_len, dim = x.shape
    mods = []
    try:
        for t in (scale, shift, gate):
            mods.append(None if t is None else _Modulation(t, batch, seq_len, dim))
    except ValueError:
        return None  # a layout the kernel does not read; native decides
    key = ("fused", x.device, x.dtype, dim, _dtype_of(norm.weight),
           _dtype_of(norm.bias), _dtype_of(residual), _dtype_of(gate),
           scale.dtype, shift.dtype)  # fmt: skip
    if not _PROOFS.verdict(key):

        def make_inputs():
            gen = torch.Generator(device=x.device).manual_seed(1245)
            rows = 257

            def rnd(dtype):
                t = _random_like_row(1, rows * dim, dtype, x.device, gen)
                return t.view(1, rows, dim)

            def mod_like(t):
                return None if t is None else (rnd(t.dtype)[:, :1] * 0.3).contiguous()

            cw, cb = _calibration_params(norm.weight, norm.bias, dim, x.device, gen)
            cres = None if residual is None else rnd(residual.dtype)
            return (rnd(x.dtype), cw, cb, norm.eps, cres, mod_like(gate),
                    mod_like(scale), mod_like(shift))  # fmt: skip

        if not _PROOFS.proven(
            key, x.device, _fused_fast, _fused_reference, make_inputs
        ):
            return None
    scale_m, shift_m, gate_m = mods
    return _fused_fast(
        x, norm.weight, norm.bias, norm.eps, residual, gate_m, scale_m, shift_m
    )


def _fused_fast(x, weight, bias, eps, residual, gate, scale, shift):
    return _launch_fp32_norm(
        x, weight, bias, eps, residual=residual, gate=gate, scale=scale, shift=shift
    )


def _fused_reference(x, weight, bias, eps, residual, gate, scale, shift):
    """The eager chain with the uncached reference LayerNorm."""

    def norm_fn(t):
        return reference_fp32_layer_norm(t, (t.shape[-1],), weight, bias, eps)

    if residual is None:
        return _norm_modulate_native(norm_fn, x, shift, scale)
    gate = 1 if gate is None else gate
    return _residual_norm_modulate_native(norm_fn, residual, x, gate, shift, scale)


def _norm_modulate_native(norm, x, shift, scale):
    return _modulate(norm(x), scale, shift).to(x.dtype)


def _residual_norm_modulate_native(norm, residual, x, gate, shift, scale):
    residual_output = _gated_residual(residual, x, gate)
    modulated = _modulate(norm(residual_output), scale, shift)
    return modulated.to(x.dtype), residual_output.to(x.dtype)


class _ScaleResidualNormScaleShift(CustomOp):
    """``residual + gate * x`` -> LayerNorm or RMSNorm -> ``* (1 + scale) + shift``.

    Returns ``(modulated, residual_output)``, both in ``x.dtype`` (the contract of
    upstream's fused CUDA kernel). The norm computes in fp32.
    """

    norm_type: str

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        elementwise_affine: bool = False,
        dtype: torch.dtype = torch.float32,
        prefix: str = "",
    ):
        super().__init__()
        self.eps = eps
        self.dtype = dtype
        self.norm = _make_norm(
            self.norm_type, hidden_size, eps, elementwise_affine, dtype
        )

    def forward_native(
        self,
        residual: torch.Tensor,
        x: torch.Tensor,
        gate: Union[torch.Tensor, int],
        shift: torch.Tensor,
        scale: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return _residual_norm_modulate_native(
            self.norm, residual, x, gate, shift, scale
        )

    def forward_cuda(
        self,
        residual: torch.Tensor,
        x: torch.Tensor,
        gate: Union[torch.Tensor, int],
        shift: torch.Tensor,
        scale: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if isinstance(gate, torch.Tensor) or (
            isinstance(gate, int) and not isinstance(gate, bool) and gate == 1
        ):
            out = _fused_norm_modulate(
                self,
                x,
                scale,
                shift,
                residual=residual,
                gate=gate if isinstance(gate, torch.Tensor) else None,
            )
            if out is not None:
                return out
        # the eager chain itself, not forward_native: a subclass (or upstream's
        # class, under the plugin) may compile forward_native, and compiled
        # modulation need not round like eager
        return _residual_norm_modulate_native(
            self.norm, residual, x, gate, shift, scale
        )


class ScaleResidualLayerNormScaleShift(_ScaleResidualNormScaleShift):
    norm_type = "layer"


class ScaleResidualRMSNormScaleShift(_ScaleResidualNormScaleShift):
    norm_type = "rms"


class _NormScaleShift(CustomOp):
    """LayerNorm or RMSNorm -> ``* (1 + scale) + shift``, returned in ``x.dtype``."""

    norm_type: str

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        elementwise_affine: bool = False,
        dtype: torch.dtype = torch.float32,
        prefix: str = "",
    ):
        super().__init__()
        self.eps = eps
        self.norm = _make_norm(
            self.norm_type, hidden_size, eps, elementwise_affine, dtype
        )

    def forward_native(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        return _norm_modulate_native(self.norm, x, shift, scale)

    def forward_cuda(
        self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        out = _fused_norm_modulate(self, x, scale, shift)
        if out is not None:
            return out
        return _norm_modulate_native(self.norm, x, shift, scale)


class LayerNormScaleShift(_NormScaleShift):
    norm_type = "layer"


class RMSNormScaleShift(_NormScaleShift):
    norm_type = "rms"


def _make_norm(
    norm_type: str,
    hidden_size: int,
    eps: float,
    elementwise_affine: bool,
    dtype: torch.dtype,
) -> nn.Module:
    if norm_type == "rms":
        return RMSNorm(hidden_size, eps=eps, dtype=dtype)
    if norm_type == "layer":
        return FP32LayerNorm(
            hidden_size, elementwise_affine=elementwise_affine, eps=eps, dtype=dtype
        )
    raise NotImplementedError(f"Norm type {norm_type} not implemented")
