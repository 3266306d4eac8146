# SPDX-License-Identifier: Apache-2.0
# The Welford replay follows ATen's vectorized_layer_norm_kernel (PyTorch,
# aten/src/ATen/native/cuda/layer_norm_kernel.cu); the code is this project's.
"""Bit-exact fp32 LayerNorm for bf16/fp16 activations, alone or fused with the
adaLN chain of Wan-style DiT blocks (gated residual before, scale/shift after).

Ops (import them from ``sglang.kernels.ops.diffusion``):

* ``fp32_layernorm_bitexact(x, weight, bias, eps)``: ``FP32LayerNorm``;
* ``fused_layernorm_scale_shift_bitexact(x, weight, bias, scale, shift, eps)``:
  ``LayerNormScaleShift``;
* ``fused_scale_residual_layernorm_scale_shift_bitexact(residual, x, gate,
  weight, bias, scale, shift, eps)``: ``ScaleResidualLayerNormScaleShift``,
  returning ``(modulated, residual_output)``;

each with a ``can_use_*`` predicate beside it.

Numerics contract (``torch.equal`` against the references, every path):

* Reference for the norm: ``F.layer_norm(x.float(), shape, w.float(),
  b.float(), eps).to(x.dtype)``. Its statistics come from ATen's vectorized CUDA
  kernel, which the kernel replays step for step: 128 lanes (4 warps); lane t
  owns the 4-element vectors t, t + 128, ... and runs ``cuWelfordOnlineSum``
  over them in order with ``1 / count`` rounded as ``1.f / count``; lanes merge
  with ``cuWelfordCombine`` in shuffle order (offsets 16..1 in each warp), then
  warps 0+2, 1+3, 0+1; ``var = m2 / D`` (``div.rn``), ``rstd = rsqrt(var +
  eps)``; out ``= w * (rstd * (x - mean)) + b``. Where nvcc contracted these
  into FMAs is ``_ATEN_REPLAY`` (found by ``scripts/aten_layernorm_replay.py``).
* Fused modules: the eager chain ``residual + x * gate`` -> norm ->
  ``(1 + scale)`` -> product -> ``+ shift`` -> ``.to(x.dtype)``; each step is
  rounded to the dtype PyTorch's type promotion gives that eager op, and the
  norm hands the modulation its output in its input dtype (``FP32LayerNorm``).
* Verified on H100 and H200, torch 2.11.0+cu130, Triton 3.6, every D % 4 == 0
  up to 8192, bf16/fp16 input with fp32, same-dtype or no parameters (the unit
  tests). ATen's build can change under it, so the dispatch
  (``fp32_layernorm_select``) still proves each configuration on first use on
  the device at hand and falls back permanently on a mismatch.

Applies to: CUDA, D % 4 == 0 and D <= 8192 (ATen takes its vectorized, and so
replayable, kernel only for those), fp32 parameters 16-byte aligned (the
reference hands them to ATen as they are, and ATen vectorizes only aligned
operands), at most 2**31 - 1 rows (a program each). Triton is optional:
without it the predicates say no and nothing here launches.
"""

import functools
import re
from typing import Optional

import torch

from sglang.kernels.ops.diffusion.norm.fp32_layernorm_triton import (
    _fp32_norm_kernel,
    _fp32_norm_rows_kernel,
    lane_count,
    merge_counts,
    quotient_reciprocal,
    triton,
)

if triton is not None:
    from sglang.kernels.ops.diffusion.common.direct_launch import (
        BoundLaunch,
        DirectLauncher,
        run_compiled,
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

# Which kernel a plan launches, and its knobs; none changes a result bit (the
# GPU tests run each variant this table picks at every shape, the interpreter
# test both kernels with and without the knobs, the proof registry the variant
# a plan takes):
# * ROWS: _fp32_norm_rows_kernel, one warp over ROWS rows, instead of
#   _fp32_norm_kernel (four warps per row);
# * KEEP: the row's input tiles stay in registers for the output pass instead
#   of being loaded again (more registers per row; one memory round trip and
#   the second read of x, residual and gate fewer);
# * PREFETCH: the output pass's other operands (weight, bias, scale, shift) are
#   loaded with the input, before the statistics, instead of after them.
# Measured (scripts/bench_norm_kernel_tuning.py, H200, torch 2.11, Triton 3.6,
# bf16 input, CUDA-graph replay, session 6; ratios to the copy floor):
# * at most _FEW_ELEMENTS (about one wave of rows; latency-bound): KEEP +
#   PREFETCH, the fastest at every D. At 257 tokens LayerNormScaleShift 2.8
#   against 3.8 us at D=1280 and 3.9 against 7.2 at D=5120,
#   ScaleResidualLayerNormScaleShift 3.2 against 4.3 and 5.3 against 9.1 us
#   (upstream's CuTe DSL kernel in the same run: 2.8, 4.7, 3.2, 5.6 us). At
#   1028x3072 it no longer paid (FP32LayerNorm 6.0 against 5.7 us).
# * elsewhere KEEP, e.g. 75600x5120 FP32LayerNorm without affine 1.01x against
#   1.23x, ScaleResidual 1.02x against 1.15x; with PREFETCH 1.17-1.30x
#   (occupancy), except LayerNormScaleShift up to _MID_ELEMENTS (4096x3072:
#   15.7 against 17.4 us);
# * D <= 1536 from _MANY_ROWS rows: a warp per row for the norms without a
#   residual (4096x1280 FP32LayerNorm 9.0 against 10.4 us, 32760x1280 1.18x
#   against 1.74x), and with KEEP for the residual at D = 1280 from 4 x
#   _MANY_ROWS rows (32760x1280 1.18x against 1.40x), but with per-frame
#   modulation (session 17, two input sets: four warps and KEEP, 75600x1280
#   222.7 against 280.2 us with fp32 modulation, 207.2 against 220.3 with
#   bf16, 32760x1280 92.9 against 100.4; CuTe DSL 234.9, 230.2, 105.3);
#   ScaleResidual at D = 1536 is fastest with four warps per row and KEEP
#   (32760x1536 1.10x against 1.16x).
# * WARM_L1: the block kernel asks L1 for the row's scale and shift at its
#   start (a prefetch: no register held), where the output pass would wait on
#   L2 after the statistics; CAP: the block kernel compiled with at most
#   _REGISTER_CAP registers per thread (seven rows per SM instead of six). For
#   ScaleResidual with per-frame modulation at 4608 < D <= 5120 from 4 x
#   _MANY_ROWS rows where LOOP does not take it (measured at D = 5120, 32760
#   and 75600 tokens, session 14; offline, the kernel holds at most 72
#   registers anyway up to D = 4608, and the capped build spills at 4096):
#   WARM_L1 with fp32 modulation (32760 tokens 392.5 against 429.5 us, 75600
#   857.9 against 901.0), both with bf16 (367.0 against 380.2 and 788.0 against
#   810.8; with fp32 the cap spills and costs). Both cost elsewhere: per-frame
#   at D <= 3072 up to 1.15x, [B, 1, D] up to 1.09x, LayerNormScaleShift up to
#   1.34x.
# * LOOP: a grid of LOOP programs per SM instead of one per row, each program
#   taking a contiguous chunk of rows in order: an SM's programs then read one
#   or two frames' modulation, where with one program per row the rows in
#   flight are a window, so every SM reads every frame's and all cross into a
#   new frame together. For the fused modules with per-frame modulation of at
#   most _LOOP_FRAME_ROWS rows a frame at D = 3072 and 5120 from 4 x _MANY_ROWS
#   rows, but ScaleResidual at 5120 with fp32 modulation, whose looped body
#   holds 126 registers (1.2-1.3x slower; capped at 80 it spills). Measured
#   (session 16, one-row kernel = 1): LayerNormScaleShift 32760x5120 0.80x with
#   bf16 modulation (B = 1 and 2), 0.84x with fp32; 32760x3072 0.95x and 0.86x;
#   ScaleResidual 32760x3072 0.95x and 0.92x. With frames of 3600 rows (75600
#   tokens) 0.97-1.02x, and always 1.10-1.18x slower with [B, 1, D] modulation.
#   Those runs alternate two input sets, so each call finds its modulation
#   outside L2; called on the same inputs again (the modulation still in L2),
#   the one-row kernel is 16-19% faster there and the loop 0.93-1.03x of it.
#   The programs per SM (_LOOP_PER_SM) are the best measured of K, 2K, K - 1
#   and K / 2 for K the one-row kernel's rows per SM, or within 0.5% of it; one
#   too many runs a second wave (LayerNormScaleShift 5120 fp32: 8 per SM 1.00x,
#   7 0.84x). ScaleResidual 32760x5120 with bf16 modulation (session 17, two
#   sets): 355-358 against 363-364 us for its WARM_L1 + CAP kernel (upstream's
#   CuTe DSL kernel 351); 6 and 12 per SM within 0.5%, 5 1.01x, 4 1.05x.
# Session 10 timed every variant again where we trailed CuTe: the choices above
# were the fastest or within 1% in five of eight; none closed a miss.
_FEW_ELEMENTS = 3 << 19
_MID_ELEMENTS = 1 << 24
_MANY_ROWS = 4096
# LOOP's programs per SM, by (residual, the kernel's ITERS (_iters), fp32
# modulation), for per-frame modulation of at most _LOOP_FRAME_ROWS rows
# a frame; measured at D = 3072 and 5120 (session 16)
_LOOP_FRAME_ROWS = 2048
_LOOP_PER_SM = {
    (False, 10, False): 18,
    (False, 10, True): 7,
    (False, 6, False): 24,
    (False, 6, True): 20,
    (True, 6, False): 18,
    (True, 6, True): 16,
    (True, 10, False): 6,
}
_TUNING_OVERRIDE: Optional[dict] = None  # tests and tools: one variant everywhere
# Cards whose own sweep replaces some of the table's choices, keyed by exact
# device name (as upstream's fused-MoE configs are); other cards keep the H200
# table. The H100 (132 SMs as the H200, 3.35 against 4.8 TB/s), with modulation
# from 4 x _MANY_ROWS rows (docs/kernel-notes.md "H100 entries", docs/results/
# h100-torch2.11-kernel-tuning-*.json): LayerNormScaleShift at D = 1536 four
# warps per row, not one, but per-frame past _LOOP_FRAME_ROWS rows a frame (a
# warp per row faster there); ScaleResidual at D = 1536 per-frame + PREFETCH;
# at 4608 < D <= 5120 per-frame bf16 modulation (no LOOP) LayerNormScaleShift
# KEEP + PREFETCH, ScaleResidual WARM_L1 + CAP at 32760 tokens too.
_H100_CARDS = frozenset({"NVIDIA H100 80GB HBM3"})


def _iters(dim: int) -> int:
    # ITERS: the kernels' steps per lane, 128 lanes of 4-element vectors; the
    # code (and so the registers) a width compiles to is a function of it
    return (dim // 4 + 127) // 128


def _variant(name: str) -> dict:
    """The tuning named ``block`` or ``rows`` (the kernel), then optionally
    ``-keep`` and ``-prefetch``, and for ``block`` ``-warm``, ``-cap`` and
    last ``-loopK`` (the knobs): how the table names them and tests and tools
    force one. The dict is complete (every knob of its kernel present).
    ``_Plan`` hands the kernel all of it as constexprs but ``CAP``, a compile
    option that picks the launcher, and ``LOOP``, the programs per SM of a
    looping grid (0: a program per row), of which the kernel is told only
    whether it loops."""
    kernel, *knobs = name.split("-")
    loop = 0
    if kernel == "block" and knobs and re.fullmatch(r"loop[1-9][0-9]*", knobs[-1]):
        loop = int(knobs.pop()[4:])
    allowed = {"keep", "prefetch"} | ({"warm", "cap"} if kernel == "block" else set())
    if kernel not in ("block", "rows") or not set(knobs) <= allowed:
        raise ValueError(f"unknown kernel variant {name!r}")
    shared = {"KEEP": "keep" in knobs, "PREFETCH": "prefetch" in knobs}
    if kernel == "rows":
        return {"ROWS": 1, **shared}
    return {**shared, "WARM_L1": "warm" in knobs, "CAP": "cap" in knobs, "LOOP": loop}


def _h100_tuning(dim: int, residual: bool, per_frame: bool,
                 mod_itemsize: int, frame_rows: int) -> Optional[str]:  # fmt: skip
    """The H100's own choice for a modulated case from 4 x _MANY_ROWS rows
    (see _H100_CARDS), or None where it keeps the table's."""
    if dim == 1536 and not residual:
        return None if per_frame and frame_rows > _LOOP_FRAME_ROWS else "block"
    if dim == 1536 and per_frame:
        return "block-keep-prefetch"
    if 4608 < dim <= 5120 and per_frame and mod_itemsize < 4:
        return "block-keep-warm-cap" if residual else "block-keep-prefetch"
    return None


def _tuning(rows: int, dim: int, residual: bool, modulated: bool,
            per_frame: bool = False, mod_itemsize: int = 4,
            frame_rows: int = 0, card: str = "") -> dict:  # fmt: skip
    """The kernel variant for ``rows`` rows of ``dim`` (see the table above);
    ``per_frame``: a modulation operand of ``[B, F, 1, D]`` with 1 < F < L,
    ``mod_itemsize``: the widest modulation operand's element size,
    ``frame_rows``: the rows of one frame of a per-frame operand (L // F),
    ``card``: the device's name (``_card_name``), for its own entries."""
    if _TUNING_OVERRIDE is not None:
        return _TUNING_OVERRIDE
    elements = rows * dim
    if elements <= _FEW_ELEMENTS:
        return _variant("block-keep-prefetch")
    wide = 4608 < dim <= 5120
    many = rows >= 4 * _MANY_ROWS
    frame_mod = modulated and per_frame
    if card in _H100_CARDS and modulated and many:
        name = _h100_tuning(dim, residual, per_frame, mod_itemsize, frame_rows)
        if name:
            return _variant(name)
    if frame_mod and many and 0 < frame_rows <= _LOOP_FRAME_ROWS:
        fp32 = mod_itemsize >= 4
        loop = _LOOP_PER_SM.get((residual, _iters(dim), fp32))
        if loop:
            return _variant(f"block-keep-loop{loop}")
    if residual and frame_mod and wide and many:
        return _variant("block-keep-warm" + "-cap" * (mod_itemsize < 4))
    if dim <= 1536 and rows >= _MANY_ROWS:
        if not residual:
            return _variant("rows")
        if dim <= 1280 and many and not frame_mod:
            return _variant("rows-keep")
    if modulated and not residual and elements <= _MID_ELEMENTS:
        return _variant("block-keep-prefetch")
    return _variant("block-keep")


# rows of at most this many elements fit the kernel's unrolled per-lane loop
_KERNEL_MAX_D = 8192
# a launch has a program per row (the rows kernel fewer), at most a CUDA grid's
# 2**31 - 1, and the kernels take a row's batch and frame in 32-bit arithmetic
# (quotient_reciprocal): larger tensors go to the reference
_KERNEL_MAX_ROWS = (1 << 31) - 1
_ROUNDING_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_REDUCED = (torch.bfloat16, torch.float16)
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_COEFFICIENTS: dict = {}


def _merge_coefficients(dim: int, device: torch.device) -> torch.Tensor:
    """The count arithmetic of ATen's five in-warp Welford merges (shfl_down by
    16, 8, 4, 2, 1) for rows of ``dim``, for the kernels' merges at dims whose
    warps mix lane counts (``dim / 4`` not a multiple of 32). Elsewhere, and
    for ATen's step between warps at every dim, the kernels fold the same
    numbers into constants (``merge_counts`` and its callers in the kernels
    module), which is also what builds this table.

    ``[10, 3, 128]`` fp32; the first five: for stage s and receiving ATen lane
    t, ``(a_n, n_a, n_b)`` with ``a_n`` the incoming count, ``coef = 1 / (a_n
    + b_n)`` and ``n_x = x_n * coef``, each rounded to fp32 as ATen's
    ``cuWelfordCombine`` rounds it. Exact for every lane, wrapped partners
    included, because the counts depend only on ``dim`` and the lane
    (``lane_count``). Empty merges get zeros, which ``welford_combine_coef``
    turns into ATen's zero result. The last five hold the same values with the
    lanes of each stage in the order ``4 * l + w`` for ATen's lane ``32 * w +
    l`` (``_fp32_norm_rows_kernel``'s threads hold lanes l, 32 + l, 64 + l and
    96 + l). Cached per (dim, device); never written after.
    """
    key = (dim, device)
    table = _COEFFICIENTS.get(key)
    if table is not None:
        return table
    counts = [lane_count(dim, lane) for lane in range(128)]
    stages = []
    for offset in (16, 8, 4, 2, 1):
        src = [lane - lane % 32 + (lane % 32 + offset) % 32 for lane in range(128)]
        merges = [merge_counts(counts[src[t]], counts[t]) for t in range(128)]
        stages.append(torch.tensor(merges, dtype=torch.float32).T)
        counts = [counts[src[t]] + counts[t] for t in range(128)]
    table = torch.stack(stages)
    by_lane = table.view(5, 3, 4, 32).transpose(2, 3).reshape(5, 3, 128)
    table = torch.cat([table, by_lane]).contiguous().to(device)
    return _COEFFICIENTS.setdefault(key, table)


def _kernel_shape_ok(rows: int, d: int) -> bool:
    # ATen takes its vectorized (and so replayable) path only for D % 4 == 0;
    # a launch takes at most _KERNEL_MAX_ROWS rows
    return 0 < d <= _KERNEL_MAX_D and d % 4 == 0 and rows <= _KERNEL_MAX_ROWS


def _aligned(t: Optional[torch.Tensor], nbytes: int) -> bool:
    return t is None or t.data_ptr() % nbytes == 0


class _Modulation:
    """A modulation tensor as a broadcast ``[B, F, D]`` view plus ``frame = L // F``.

    Accepts the layouts the fused modules take: a scalar, ``[D]``, ``[B|1, D]``,
    ``[B|1, L|1, D|1]`` and per-frame ``[B, F, 1, D]`` (``L % F == 0``).
    """

    __slots__ = ("tensor", "strides", "frame", "per_frame", "dtype")

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
        # one frame: every row reads it, whatever its index
        self.strides = (v.stride(0), 0, v.stride(2)) if frames == 1 else v.stride()
        self.frame = max(seq_len // frames, 1)
        # F frames of L // F rows each; 1 < F < L needs the kernel's quotient
        self.per_frame = frames not in (1, seq_len)


# _fp32_norm_kernel's arguments: 12 pointers, then ints, then eps
_N_POINTER_ARGS = 12
# only the FMAs written out in the kernel may fuse, as in ATen's build
_KERNEL_OPTIONS = {"num_warps": 4, "enable_fp_fusion": False}
_LAUNCHER = (
    None
    if triton is None
    else DirectLauncher(_fp32_norm_kernel, _N_POINTER_ARGS, _KERNEL_OPTIONS)
)
# CAP's limit: ScaleResidual with bf16 modulation at D = 5120 holds 80
# registers without it (six rows per SM), and spills none at 72 (seven)
_REGISTER_CAP = 72
_CAPPED_LAUNCHER = (
    None
    if triton is None
    else DirectLauncher(
        _fp32_norm_kernel, _N_POINTER_ARGS,
        {**_KERNEL_OPTIONS, "maxnreg": _REGISTER_CAP},
    )  # fmt: skip
)
_ROWS_LAUNCHER = (
    None
    if triton is None
    else DirectLauncher(
        _fp32_norm_rows_kernel, _N_POINTER_ARGS, {**_KERNEL_OPTIONS, "num_warps": 1}
    )
)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    # a looping grid's programs are a multiple of the SMs; 1 off CUDA (the
    # interpreter, meta tensors), where the grid only needs to be smaller
    # than the rows for the loop to run
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def _card_name(device: torch.device) -> str:
    # the key of a card's own tuning entries; "" off CUDA
    return torch.cuda.get_device_name(device) if device.type == "cuda" else ""


class _Plan:
    """One launch configuration, prepared once and reused for every call.

    Holds everything ``_fp32_norm_kernel``'s launch needs that does not depend
    on the data: the grid, the int and constexpr arguments, the roundings of the
    eager chain, and (after the first launch) the compiled kernel, bound in a
    ``BoundLaunch``. A call then only allocates the outputs, reads the data
    pointers and launches. Valid for every call whose
    operands have the same ``_plan_key`` (shapes, strides, dtypes, devices,
    16-byte alignments, eps): the ints and constexprs are functions of exactly
    those, and so is Triton's specialization (see ``DirectLauncher``).
    """

    __slots__ = (
        "rows", "shape", "ints", "constexprs", "tail", "kernel", "device",
        "has_res", "store_stats", "coef",
        "launcher", "grid", "bound", "tuning",
    )  # fmt: skip

    def __init__(self, x, weight, bias, eps, residual=None, gate=None, scale=None,
                 shift=None, store_stats=False, replay=None,
                 tuning=None):  # fmt: skip
        self.shape = x.shape
        if x.dim() == 2:
            batch, (seq_len, dim) = 1, x.shape
        else:
            batch, seq_len, dim = x.shape
        self.rows = batch * seq_len
        self.device = x.get_device()
        self.has_res = residual is not None
        self.store_stats = store_stats
        self.coef = _merge_coefficients(dim, x.device)
        self.kernel = self.bound = None
        code = _ROUNDING_CODE.__getitem__
        r_dtype = g1_dtype = x.dtype
        mods = {}
        if residual is not None:
            if gate is not None:
                mods["g"] = _Modulation(gate, batch, seq_len, dim)
                g1_dtype = torch.promote_types(x.dtype, gate.dtype)
            r_dtype = torch.promote_types(residual.dtype, g1_dtype)
        s_dtype = m1_dtype = m_dtype = r_dtype
        if scale is not None:
            mods["sc"] = _Modulation(scale, batch, seq_len, dim)
            mods["sh"] = _Modulation(shift, batch, seq_len, dim)
            s_dtype = scale.dtype
            m1_dtype = torch.promote_types(r_dtype, s_dtype)
            m_dtype = torch.promote_types(m1_dtype, shift.dtype)
        ints = [
            dim,
            dim if residual is not None else 0,
            dim,
            dim if residual is not None else 0,
            seq_len,
            *quotient_reciprocal(max(seq_len, 1)),
        ]
        for key in ("g", "sc", "sh"):
            m = mods.get(key)
            frame = 1 if m is None else m.frame
            strides = (0, 0, 0) if m is None else m.strides
            ints += (*strides, *quotient_reciprocal(frame))
        frames = [m.frame for m in mods.values() if m.per_frame]
        if tuning is None:
            widest = max((m.tensor.element_size() for m in mods.values()), default=4)
            tuning = _tuning(self.rows, dim, residual is not None,
                             scale is not None, bool(frames), widest,
                             min(frames, default=0), _card_name(x.device))  # fmt: skip
        self.tuning = tuning  # the variant, as _launch_fp32_norm's tuning
        knobs = dict(tuning)
        if "ROWS" in tuning:
            per_program = tuning["ROWS"]
            self.launcher = _ROWS_LAUNCHER
            self.grid = ((self.rows + per_program - 1) // per_program, 1, 1)
        else:
            self.launcher = _CAPPED_LAUNCHER if tuning.get("CAP") else _LAUNCHER
            # LOOP: each program takes ceil(rows / programs) rows, so the last
            # chunk ends, in int32, at up to rows + programs - 1; where that
            # passes the row limit, a program per row (a chunk of one) instead
            loop = tuning.get("LOOP", 0)
            programs = loop * _sm_count(x.device)
            if not programs or self.rows > _KERNEL_MAX_ROWS - programs:
                programs = self.rows
            self.grid = (min(self.rows, programs), 1, 1)
            # the kernel is told only whether it loops (a constexpr per count
            # would compile a kernel per count); the count is the grid's
            knobs["LOOP"] = loop > 0
        ints.append(self.rows)
        self.ints = tuple(ints)
        self.constexprs = dict(
            N=dim,
            ITERS=_iters(dim),
            HAS_RESIDUAL=residual is not None,
            HAS_GATE="g" in mods,
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            HAS_MOD=scale is not None,
            STORE_STATS=store_stats,
            PER_FRAME=bool(frames),
            G1_RND=code(g1_dtype),
            R_RND=code(r_dtype),
            S_RND=code(s_dtype),
            M1_RND=code(m1_dtype),
            M_RND=code(m_dtype),
            **(_ATEN_REPLAY if replay is None else replay),
            # the knobs this kernel takes (CAP is the launcher's)
            **{k: v for k, v in knobs.items() if k in self.launcher.fn.arg_names},
        )
        self.tail = self.launcher.tail(
            self.constexprs, _N_POINTER_ARGS + len(self.ints) + 1
        )

    def _launch(self, pointers: tuple, eps: float) -> None:
        """Launch through ``DirectLauncher``; bind the first compiled kernel."""
        args = (*pointers, self.coef, *self.ints, eps)
        if self.kernel is not None and self.launcher.fast():
            # compiled but not bound: it needs scratch (see BoundLaunch.of)
            run_compiled(self.kernel, self.grid, self.device, args, self.tail)
            return
        kernel = self.launcher.launch(self.grid, args, self.constexprs)
        if kernel is not None and self.kernel is None:  # None: hooks set
            self.kernel = kernel
            post = (self.coef.data_ptr(), *self.ints, eps)
            self.bound = BoundLaunch.of(
                kernel, self.grid, self.device, post + self.tail
            )

    def __call__(self, x, weight, bias, eps, residual=None, gate=None, scale=None,
                 shift=None):  # fmt: skip
        """Launch on operands that match the plan; outputs as ``_launch_fp32_norm``."""
        y = torch.empty_like(x)
        res_out = torch.empty_like(x) if self.has_res else None
        stats = rstd = None
        if self.store_stats:
            stats = torch.empty(self.rows, device=x.device, dtype=torch.float32)
            rstd = torch.empty_like(stats)
        if self.rows > 0:
            bound = self.bound
            if bound is not None and self.launcher.fast():
                # ints, and each tensor's data_ptr() read once: x and y fill
                # most slots, and each read costs a C call
                p = _data_ptr
                bound(*_pointer_slots(
                    p(x), None if residual is None else p(residual),
                    None if gate is None else p(gate),
                    None if weight is None else p(weight),
                    None if bias is None else p(bias),
                    None if scale is None else p(scale),
                    None if shift is None else p(shift),
                    p(y), None if res_out is None else p(res_out),
                    None if stats is None else p(stats),
                    None if rstd is None else p(rstd),
                ))  # fmt: skip
            else:
                pointers = _pointer_slots(
                    x, residual, gate, weight, bias, scale, shift, y, res_out,
                    stats, rstd,
                )  # fmt: skip
                self._launch(pointers, eps)
        result = y if res_out is None else (y, res_out)
        return (result, (stats, rstd)) if self.store_stats else result


_data_ptr = torch.Tensor.data_ptr


def _pointer_slots(x, residual, gate, weight, bias, scale, shift, y, res_out,
                   stats, rstd) -> tuple:  # fmt: skip
    """The kernel's first 11 pointer arguments, tensors or data pointers.

    An absent operand (``None``) fills its slot with ``x`` (inputs) or ``y``
    (outputs): the kernel's constexprs say which are absent and it never touches
    those slots, but each must hold a valid pointer.
    """
    return (
        x,
        x if residual is None else residual,
        x if gate is None else gate,
        x if weight is None else weight,
        x if bias is None else bias,
        x if scale is None else scale,
        x if shift is None else shift,
        y,
        y if res_out is None else res_out,
        y if stats is None else stats,
        y if rstd is None else rstd,
    )


def _tensor_key(t: Optional[torch.Tensor]):
    if t is None:
        return None
    return (t.shape, t.stride(), t.dtype, t.get_device(), t.data_ptr() & 15)


def _plan_key(x, weight, bias, eps, residual, gate, scale, shift) -> tuple:
    # everything a _Plan depends on; only the data pointers are left out
    return (
        _tensor_key(x), _tensor_key(weight), _tensor_key(bias), eps,
        _tensor_key(residual), _tensor_key(gate), _tensor_key(scale),
        _tensor_key(shift), torch.cuda.current_device(),
    )  # fmt: skip


_PLANS: dict = {}
_MAX_PLANS = 4096


def plan_for(x, weight, bias, eps, residual=None, gate=None, scale=None, shift=None):
    """The cached ``_Plan`` for these operands' configuration (see ``_plan_key``).

    ``x`` is ``[M, D]`` or ``[B, L, D]`` and contiguous, as is ``residual``; a
    plan made for a 2-D ``x`` also serves any contiguous ``x`` with the same rows.
    """
    key = _plan_key(x, weight, bias, eps, residual, gate, scale, shift)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _Plan(x, weight, bias, eps, residual, gate, scale, shift)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _planned(x, weight, bias, eps, residual=None, gate=None, scale=None, shift=None):
    plan = plan_for(x, weight, bias, eps, residual, gate, scale, shift)
    return plan(x, weight, bias, eps, residual, gate, scale, shift)


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
    """Launch ``_fp32_norm_kernel`` on ``x`` of shape ``[B, L, D]`` (or ``[M, D]``),
    any strides; an unprepared, uncached launch for tests and tools.

    Output dtypes are ``x.dtype``. Intermediate roundings follow PyTorch's type
    promotion of the eager chain, so callers get the bits the eager ops give.
    Returns ``y`` or ``(y, residual_out)``, plus ``(mean, rstd)`` if asked;
    ``replay`` / ``tuning`` override ``_ATEN_REPLAY`` / ``_tuning``.
    """
    x = x.contiguous()
    residual = None if residual is None else residual.reshape(x.shape).contiguous()
    plan = _Plan(x, weight, bias, eps, residual, gate, scale, shift, store_stats,
                 replay, tuning)  # fmt: skip
    return plan(x, weight, bias, eps, residual, gate, scale, shift)


################################################################################
# Ops and their predicates
################################################################################
def _param_ok(p: Optional[torch.Tensor], x: torch.Tensor) -> bool:
    if p is None:
        return True
    if p.device != x.device or p.dim() != 1 or not p.is_contiguous():
        return False
    # fp32 parameters go to ATen as they are in the reference: only aligned ones
    # get its vectorized (replayed) kernel
    return p.dtype == x.dtype or (p.dtype == torch.float32 and _aligned(p, 16))


def can_use_fp32_layernorm_bitexact(
    x: torch.Tensor,
    normalized_shape,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> bool:
    """Whether ``fp32_layernorm_bitexact`` reproduces the reference for these.

    CUDA bf16/fp16 ``x``, a 1-D ``normalized_shape`` with D % 4 == 0 and
    D <= 8192, at most 2**31 - 1 rows, parameters absent, in ``x.dtype``, or
    fp32 and 16-byte aligned, on ``x``'s device; not while compiling (the op is
    opaque there anyway).
    """
    return (
        triton is not None
        and x.is_cuda
        and x.dtype in _REDUCED
        and len(normalized_shape) == 1
        and x.shape[-1] == normalized_shape[0]
        and _kernel_shape_ok(x.numel() // max(x.shape[-1], 1), x.shape[-1])
        and _param_ok(weight, x)
        and _param_ok(bias, x)
    )


def fp32_layernorm_bitexact(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """LayerNorm over the last dim of ``x`` in fp32, returned in ``x.dtype``.

    Bit-identical to ``F.layer_norm(x.float(), (D,), w.float(), b.float(),
    eps).to(x.dtype)`` where ``can_use_fp32_layernorm_bitexact`` holds.
    """
    rows = x.reshape(-1, x.shape[-1]) if x.is_contiguous() else x.contiguous()
    return _planned(rows.view(-1, x.shape[-1]), weight, bias, eps).view(x.shape)


def can_use_fused_layernorm_scale_shift_bitexact(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: torch.Tensor,
    shift: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
) -> bool:
    """Whether the fused ops reproduce the eager chain for these operands.

    CUDA ``x`` of shape ``[B, L, D]`` (D % 4 == 0, D <= 8192, at most
    2**31 - 1 rows B * L) in fp32, bf16 or fp16; a residual of ``x``'s shape;
    modulations in those dtypes, in a layout the kernel reads (scalar, ``[D]``,
    ``[B|1, D]``, ``[B|1, L|1, D]``, per-frame ``[B, F, 1, D]``); parameters as
    for the single norm.
    """
    if triton is None or not x.is_cuda or x.dim() != 3:
        return False
    batch, seq_len, dim = x.shape
    if not _kernel_shape_ok(batch * seq_len, dim) or x.dtype not in _KERNEL_DTYPES:
        return False
    if residual is not None and residual.shape != x.shape:
        return False
    for t in (residual, gate, scale, shift):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.device != x.device:
            return False
        if t.dtype not in _KERNEL_DTYPES:
            return False
    for p in (weight, bias):
        if p is None:
            continue
        if p.device != x.device or p.dtype not in _KERNEL_DTYPES:
            return False
        if p.dtype == torch.float32 and not _aligned(p, 16):
            return False
    try:
        for t in (scale, shift, gate):
            if t is not None:
                _Modulation(t, batch, seq_len, dim)
    except ValueError:
        return False
    return True


def fused_layernorm_scale_shift_bitexact(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """``(norm(x) * (1 + scale) + shift).to(x.dtype)``, one pass, eager bits."""
    return _planned(x.contiguous(), weight, bias, eps, scale=scale, shift=shift)


def fused_scale_residual_layernorm_scale_shift_bitexact(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    scale: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
):
    """``r = residual + x * gate`` (``gate=None``: 1), then the modulated norm
    of ``r``; returns ``(modulated, r)``, both in ``x.dtype``, eager bits."""
    return _planned(
        x.contiguous(), weight, bias, eps, residual.contiguous(), gate, scale, shift
    )


__all__ = [
    "can_use_fp32_layernorm_bitexact",
    "can_use_fused_layernorm_scale_shift_bitexact",
    "fp32_layernorm_bitexact",
    "fused_layernorm_scale_shift_bitexact",
    "fused_scale_residual_layernorm_scale_shift_bitexact",
]
