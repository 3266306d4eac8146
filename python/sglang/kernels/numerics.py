# SPDX-License-Identifier: Apache-2.0
"""Numerical primitives shared by bit-exact Triton kernels.

Each one reproduces a rounding boundary or an ATen reduction step exactly, and
uses only Triton builtins, so it also runs under ``TRITON_INTERPRET=1`` (how a
CPU-only CI checks the kernels built on them). ``tl.math.div_rn`` and the
explicit ``tl.fma`` calls compile to the same ``div.rn.f32`` / ``fma.rn.f32``
that inline PTX would; kernels that use these must be compiled with
``enable_fp_fusion=False`` so that no other product is contracted.
"""

import triton  # type: ignore
import triton.language as tl  # type: ignore


@triton.jit
def round_fp32_to(value, CODE: tl.constexpr):
    """Round fp32 ``value`` as a store to dtype CODE would, and widen it back.

    CODE 0: fp32 (unchanged), 1: bf16, 2: fp16; round-to-nearest-even through
    the hardware conversion, so NaN stays NaN and overflow goes to +-inf, as
    PyTorch's ``.to(dtype)`` does.
    """
    if CODE == 1:
        value = value.to(tl.bfloat16).to(tl.float32)
    elif CODE == 2:
        value = value.to(tl.float16).to(tl.float32)
    return value


@triton.jit
def welford_online_update(val, mean, m2, active, rcp, FMA: tl.constexpr):
    """One step of ATen's ``cuWelfordOnlineSum`` where ``active``.

    ``rcp`` is ``1 / count`` for the new count, rounded as ATen's build rounds
    ``1.f / count``; FMA says whether that build contracted the two updates.
    """
    delta = val - mean
    if FMA:
        new_mean = tl.fma(delta, rcp, mean)
        new_m2 = tl.fma(delta, val - new_mean, m2)
    else:
        new_mean = mean + delta * rcp
        new_m2 = m2 + delta * (val - new_mean)
    return tl.where(active, new_mean, mean), tl.where(active, new_m2, m2)


@triton.jit
def welford_combine_coef(
    b_mean, b_m2, a_mean, a_m2, a_n, n_a, n_b, MEAN_FMA: tl.constexpr,
    M2_FMA: tl.constexpr,
):  # fmt: skip
    """ATen's ``cuWelfordCombine(dataB, dataA)`` (B receives, A is incoming)
    with its count arithmetic done beforehand.

    The counts of a Welford merge do not depend on the data, so a kernel knows
    ``n_a = a_n * (1 / (a_n + b_n))`` and ``n_b`` (same roundings, in fp32)
    before it runs and skips ATen's division. Both counts 0 must come in as
    ``a_n = n_a = n_b = 0``: with the empty states (0, 0) that gives ATen's
    zero result without its guard. MEAN_FMA picks the contraction of ``n_a *
    mean_a + n_b * mean_b`` (0: the first product fused, 1: the second, 2:
    none); M2_FMA that of the m2 update.
    """
    delta = b_mean - a_mean
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
    return mean, m2


__all__ = [
    "round_fp32_to",
    "welford_combine_coef",
    "welford_online_update",
]
