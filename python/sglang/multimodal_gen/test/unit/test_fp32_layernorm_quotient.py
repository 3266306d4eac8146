# SPDX-License-Identifier: Apache-2.0
"""A row's batch and frame, taken without a division.

The kernels read the modulation of row ``n`` at batch ``n // L`` and frame
``(n % L) // (L // F)``. They take both quotients as a multiply-high and a
shift by launch constants (``quotient_reciprocal``, ``_quotient``): exact for
every row index a launch has, checked here in Python integers, under Triton's
interpreter (CPU) and on the GPU.
"""

import importlib.util
import json
import random
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_select as sel
from sglang.kernels.ops.diffusion.norm.fp32_layernorm_triton import (
    quotient_reciprocal,
    triton,
)
from sglang.multimodal_gen.runtime.layers import layernorm as ln

from _shared import DEVICES, HAS_CUDA, run_python

needs_triton = pytest.mark.skipif(triton is None, reason="needs Triton")

# Wan's sequence and frame lengths, powers of two and their neighbours, the
# extremes
DIVISORS = sorted(
    {1, 2, 3, 5, 7, 21, 257, 1560, 3600, 4096, 32760, 75600, 2**31 - 1}
    | {2**k + e for k in range(1, 31) for e in (-1, 0, 1)}
)


def _dividends(d: int, rng: random.Random) -> list:
    """Around each multiple of ``d`` where a quotient changes, the ends of the
    range, and random row indices."""
    top = 2**31 - 1
    near = [0, 1, d - 1, d, d + 1, top // d * d - 1, top // d * d, top - 1, top]
    return [
        n for n in near + [rng.randrange(2**31) for _ in range(64)] if 0 <= n <= top
    ]


def _quotient_in_32_bits(n: int, mul: int, shift: int) -> int:
    # the kernel's arithmetic: umulhi(2n, mul) >> shift, all operands 32-bit
    assert 0 <= 2 * n < 2**32 and 0 <= mul < 2**32
    return ((2 * n * mul) >> 32) >> shift


@pytest.mark.parametrize("d", DIVISORS)
def test_quotient_reciprocal_gives_the_integer_quotient(d):
    mul, shift = quotient_reciprocal(d)
    assert 2**31 <= mul < 2**32 and 0 <= shift <= 31
    rng = random.Random(d)
    for n in _dividends(d, rng):
        assert _quotient_in_32_bits(n, mul, shift) == n // d, (n, d)


def test_quotient_reciprocal_is_exact_for_every_small_case():
    # every dividend below 4 * d for the divisors up to 600
    for d in range(1, 600):
        mul, shift = quotient_reciprocal(d)
        for n in range(4 * d):
            assert _quotient_in_32_bits(n, mul, shift) == n // d, (n, d)


@pytest.mark.parametrize("d", [0, -1, 2**31, 2**40, 1.0, "3"])
def test_quotient_reciprocal_rejects_what_it_cannot_divide_by(d):
    with pytest.raises(ValueError, match="divisor"):
        quotient_reciprocal(d)


# the kernel under test, in a module of its own: Triton reads a jitted
# function's source from its file, and the interpreter is chosen at import
KERNEL = textwrap.dedent(
    """
    import triton
    import triton.language as tl

    from sglang.kernels.ops.diffusion.norm.fp32_layernorm_triton import _quotient


    # as the norm kernels take them: a shift of 1 would otherwise be a constant
    @triton.jit(do_not_specialize=["mul", "shift"])
    def quotients(N, Q, mul, shift, COUNT: tl.constexpr):
        i = tl.arange(0, COUNT)
        tl.store(Q + i, _quotient(tl.load(N + i), (mul, shift)))
    """
)

CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch

    spec = importlib.util.spec_from_file_location("quotient_kernel", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    n = torch.tensor(json.loads(sys.argv[2]), dtype=torch.int32)
    out = {}
    for d, (mul, shift) in json.loads(sys.argv[3]).items():
        q = torch.empty_like(n)
        module.quotients[(1,)](n, q, mul, shift, COUNT=n.numel())
        out[d] = q.tolist()
    print(json.dumps(out))
    """
)


@needs_triton
@pytest.mark.parametrize("device", DEVICES)
def test_kernel_quotient_equals_integer_division(device, tmp_path):
    """``_quotient`` as compiled (CUDA) or interpreted (CPU): row indices up to
    2**31 - 1, where ``2 * n`` uses the top bit of its 32."""
    path = tmp_path / "quotient_kernel.py"
    path.write_text(KERNEL)
    rng = random.Random(7)
    divisors = [1, 2, 3, 21, 1560, 3600, 32760, 75600, 2**31 - 1]
    n = sorted({m for d in divisors for m in _dividends(d, rng)})
    n = n + [0] * (1024 - len(n))  # a power of two for tl.arange
    assert len(n) == 1024
    reciprocals = {str(d): quotient_reciprocal(d) for d in divisors}
    if device == "cpu":
        proc = run_python(
            CHILD, str(path), json.dumps(n), json.dumps(reciprocals),
            env={"TRITON_INTERPRET": "1"}, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        spec = importlib.util.spec_from_file_location("quotient_kernel", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        n_dev = torch.tensor(n, dtype=torch.int32, device=device)
        got = {}
        for d, (mul, shift) in reciprocals.items():
            q = torch.empty_like(n_dev)
            module.quotients[(1,)](n_dev, q, mul, shift, COUNT=len(n))
            got[d] = q.tolist()
    for d in divisors:
        assert got[str(d)] == [m // d for m in n], d


def _meta(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="meta")


@pytest.mark.parametrize(
    "shape, frame, frame_stride, per_frame",
    [
        ((2, 1, 64), 12, 0, False),  # [B, 1, D]: one frame, read by every row
        ((64,), 12, 0, False),
        ((2, 12, 64), 1, 64, False),  # [B, L, D]: a frame per row
        ((2, 12, 1, 64), 1, 64, False),
        ((2, 3, 1, 64), 4, 64, True),  # [B, F, 1, D]: F frames of L // F rows
        ((1, 4, 1, 64), 3, 64, True),
    ],
)
def test_only_per_frame_modulation_takes_the_quotient(
    shape, frame, frame_stride, per_frame
):
    """With one frame or a frame per row the frame is the row (its stride is
    0 for one frame), so the kernels skip the quotient there: the plan's
    PER_FRAME is set by per-frame operands only, and each operand's ints
    carry its frame's reciprocal."""
    batch, seq, dim = 2 if shape[0] == 2 else 1, 12, 64
    mod = kb._Modulation(_meta(*shape, dtype=torch.float32), batch, seq, dim)
    assert (mod.frame, mod.strides[1], mod.per_frame) == (
        frame,
        frame_stride,
        per_frame,
    )
    if triton is None:
        return
    x = _meta(batch, seq, dim)
    w = _meta(dim, dtype=torch.float32)
    scale = _meta(*shape, dtype=torch.float32)
    plan = kb._Plan(x, w, w, 1e-6, scale=scale, shift=scale)
    assert plan.constexprs["PER_FRAME"] is per_frame
    named = dict(zip(plan.launcher.fn.arg_names[kb._N_POINTER_ARGS :], plan.ints))
    assert (named["l_mul"], named["l_shift"]) == quotient_reciprocal(seq)
    assert (named["sc_mul"], named["sc_shift"]) == quotient_reciprocal(frame)
    assert (named["sc_sf"], named["L"]) == (frame_stride, seq)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@needs_triton
@pytest.mark.parametrize("module", ["FP32LayerNorm", "LayerNormScaleShift",
                                    "ScaleResidualLayerNormScaleShift"])  # fmt: skip
def test_more_rows_than_a_launch_takes_go_to_the_reference(module, monkeypatch):
    """A launch has at most 2**31 - 1 rows (a CUDA grid's programs, the int32
    row arithmetic above); more go to the reference instead of failing to
    launch. The limit is lowered here so that a small tensor crosses it: at
    the limit the modules launch a plan, one row past it none, and both give
    the reference's bits."""
    assert kb._KERNEL_MAX_ROWS == 2**31 - 1
    limit, dim = 24, 64
    monkeypatch.setattr(kb, "_KERNEL_MAX_ROWS", limit)
    gen = torch.Generator().manual_seed(31)

    def rnd(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=gen).to("cuda", dtype)

    m = getattr(ln, module)(dim, eps=1e-6, elementwise_affine=True).cuda()
    norm = m if module == "FP32LayerNorm" else m.norm
    with torch.no_grad():
        norm.weight.copy_(rnd(dim, dtype=torch.float32) * 0.5 + 1)
        norm.bias.copy_(rnd(dim, dtype=torch.float32) * 0.5)

    def reference_norm(t):
        return F.layer_norm(
            t.float(), (dim,), norm.weight.float(), norm.bias.float(), 1e-6
        ).to(t.dtype)

    for rows, launches in ((limit, True), (limit + 1, False)):
        monkeypatch.setattr(kb, "_PLANS", {})
        monkeypatch.setattr(sel, "_RUNNERS", {})
        x, residual = rnd(1, rows, dim), rnd(1, rows, dim)
        gate, shift, scale = (rnd(1, 1, dim) * 0.3 for _ in range(3))
        with torch.no_grad():
            if module == "FP32LayerNorm":
                got, want = m(x), reference_norm(x)
            elif module == "LayerNormScaleShift":
                got = m(x, shift, scale)
                want = sel.norm_scale_shift_chain(reference_norm, x, shift, scale)
            else:
                got = m(residual, x, gate, shift, scale)
                want = sel.scale_residual_norm_scale_shift_chain(
                    reference_norm, residual, x, gate, shift, scale
                )
        assert bool(kb._PLANS) is launches, (rows, list(kb._PLANS))
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):  # fmt: skip
            assert g.dtype == torch.bfloat16
            assert torch.equal(g, w), (rows, (g != w).sum().item())
