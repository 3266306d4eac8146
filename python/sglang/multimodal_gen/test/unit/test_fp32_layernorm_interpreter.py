# SPDX-License-Identifier: Apache-2.0
"""The bit-exact kernel's structure, checked on CPU through Triton's interpreter.

On a GPU the kernel is checked against ATen bit for bit (the ``gpu`` tests). A
CPU-only CI cannot run ATen's CUDA kernel, but it can run ours under
``TRITON_INTERPRET=1`` and compare it with a plain-torch replay of the same
algorithm: lane layout, Welford order, merge order, masking of the last partial
tile, the residual and modulation roundings and every layout of the modulation
tensors. Two interpreter shortcuts of Triton 3.6 are patched in the child to the
GPU's arithmetic: fp32 -> bf16 conversions truncate (the GPU and PyTorch round
to nearest even), and ``tl.fma`` is ``x * y + z`` in whatever precision numpy
promotes to (the GPU rounds once, to fp32). ``rsqrt`` stays ``1 / sqrt``, which
the replay uses too; which products ATen's build contracted is something only
the GPU tests can see.
"""

import json
import textwrap

import pytest

from _shared import run_python

try:
    import triton  # noqa: F401
except ImportError:
    triton = None

# the replay and the cases run in a child: the interpreter is chosen when the
# kernel module is imported
CHILD = textwrap.dedent(
    r"""
    import itertools, json, sys
    import numpy as np
    import torch
    from triton.runtime import interpreter

    convert = interpreter._convert_float

    def convert_rne(data, src, dst, rounding_mode):
        if (src.primitive_bitwidth, dst.primitive_bitwidth, dst.fp_mantissa_width) == (
            32, 16, 7
        ):
            t = torch.from_numpy(np.ascontiguousarray(data).view(np.float32))
            return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return convert(data, src, dst, rounding_mode)

    interpreter._convert_float = convert_rne

    def fma_once(self, x, y, z):
        # one rounding to fp32 (exact product and sum in fp64, then rounded)
        f64 = np.float64
        out = x.data.astype(f64) * y.data.astype(f64) + z.data.astype(f64)
        return interpreter.TensorHandle(out.astype(np.float32), z.dtype.scalar)

    interpreter.InterpreterBuilder.create_fma = fma_once

    def fma(a, b, c):
        return (a.double() * b.double() + c.double()).float()

    from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
    from sglang.kernels.ops.diffusion import norm_scale_shift_chain
    from sglang.kernels.ops.diffusion import scale_residual_norm_scale_shift_chain

    kb.torch.cuda.current_device = lambda: -1  # CPU tensors in the plan key
    # the plans pick a kernel and its knobs by shape: force one for every case
    kb._TUNING_OVERRIDE = kb._variant(sys.argv[1])

    def combine(b, a):
        # cuWelfordCombine(b, a) with the interpreter's unfused fma
        (bm, b2, bn), (am, a2, an) = b, a
        delta = bm - am
        n = an + bn
        coef = torch.where(n > 0, 1.0 / n, torch.full_like(n, float("inf")))
        na, nb = an * coef, bn * coef
        mean = fma(na, am, nb * bm)
        m2 = fma(delta * delta * an, nb, a2 + b2)
        keep = n > 0
        return (torch.where(keep, mean, 0.0), torch.where(keep, m2, 0.0), n)

    def gather(t, src):
        return t.gather(-1, src.expand_as(t))

    def replay_norm(v, w, b, eps):
        # v: [M, D] fp32 inputs of the norm; ATen's 128-lane vectorized Welford
        m_rows, d = v.shape
        vecs = d // 4
        iters = (vecs + 127) // 128
        lanes = torch.arange(128)
        mean = torch.zeros(m_rows, 128)
        m2 = torch.zeros(m_rows, 128)
        n = torch.zeros(m_rows, 128)
        for k in range(iters):
            vidx = k * 128 + lanes
            active = vidx < vecs
            for j in range(4):
                cols = (vidx * 4 + j).clamp(max=d - 1)
                val = torch.where(active, v[:, cols], 0.0)
                rcp = torch.tensor(1.0 / (4 * k + j + 1), dtype=torch.float32)
                delta = val - mean
                new_mean = fma(delta, rcp, mean)
                new_m2 = fma(delta, val - new_mean, m2)
                mean = torch.where(active, new_mean, mean)
                m2 = torch.where(active, new_m2, m2)
            n = torch.where(active, float((k + 1) * 4), n)
        state = [t.view(m_rows, 4, 32) for t in (mean, m2, n)]
        lane = torch.arange(32)
        for off in (16, 8, 4, 2, 1):
            src = ((lane + off) % 32).view(1, 1, 32)
            state = combine(state, [gather(t, src) for t in state])
        state = [t.reshape(m_rows, 128) for t in state]
        for off in (64, 32):
            src = ((lanes + off) % 128).view(1, 128)
            state = combine(state, [gather(t, src) for t in state])
        mean, m2 = state[0][:, :1], state[1][:, :1]
        # numpy's correctly rounded sqrt and division, as the interpreter's
        # rsqrt; torch's CPU 1 / sqrt is not always correctly rounded
        var_eps = (m2 / float(d) + eps).numpy()
        rstd = torch.from_numpy(np.float32(1.0) / np.sqrt(var_eps))
        centered = rstd * (v - mean)
        if w is not None and b is not None:
            return fma(w.float(), centered, b.float())
        if w is not None:
            return w.float() * centered
        if b is not None:
            return centered + b.float()
        return centered

    def norm_like(dtype, w, b, eps):
        def norm(t):
            flat = replay_norm(t.float().reshape(-1, t.shape[-1]), w, b, eps)
            return flat.view(t.shape).to(t.dtype)
        return norm

    torch.manual_seed(0)
    bad = []
    cases = itertools.product(
        [(1, 9, 68), (2, 6, 1032)],  # a partial last tile, odd rows; two tiles
        [torch.bfloat16, torch.float16],
        ["fp32", "same", None],
        ["plain", "mod", "res"],
        ["bld", "bd", "frames"],
    )
    for (bsz, seq, d), xdt, params, kind, layout in cases:
        if kind == "plain" and layout != "bld":
            continue
        pdt = torch.float32 if params == "fp32" else xdt
        w = None if params is None else torch.randn(d).to(pdt)
        b = None if params is None else torch.randn(d).to(pdt)
        x = (torch.randn(bsz, seq, d) * 3 + 0.5).to(xdt)
        def mod(dt):
            shape = {"bld": (bsz, 1, d), "bd": (bsz, d), "frames": (bsz, 3, 1, d)}
            return (torch.randn(shape[layout]) * 0.5).to(dt)
        eps = 1e-6
        norm = norm_like(xdt, w, b, eps)
        if kind == "plain":
            got = (kb.fp32_layernorm_bitexact(x, w, b, eps),)
            want = (norm(x),)
        elif kind == "mod":
            sc, sh = mod(torch.float32), mod(xdt)
            got = (kb.fused_layernorm_scale_shift_bitexact(x, w, b, sc, sh, eps),)
            want = (norm_scale_shift_chain(norm, x, sh, sc),)
        else:
            r, g, sc, sh = torch.randn_like(x), mod(torch.float32), mod(xdt), mod(xdt)
            got = kb.fused_scale_residual_layernorm_scale_shift_bitexact(
                r, x, g, w, b, sc, sh, eps)
            want = scale_residual_norm_scale_shift_chain(norm, r, x, g, sh, sc)
        for g_, w_ in zip(got, want):
            if g_.dtype != w_.dtype or not torch.equal(g_, w_):
                bad.append([bsz, seq, d, str(xdt), params, kind, layout])
    print(json.dumps({"cases_bad": bad}))
    """
)


@pytest.mark.skipif(triton is None, reason="needs Triton (its interpreter)")
@pytest.mark.parametrize(
    "kernel",
    ["rows", "block", "rows-keep-prefetch", "block-keep-prefetch", "block-keep-loop2"],
)
def test_kernel_matches_a_replay_of_its_algorithm_under_the_interpreter(kernel):
    """Both kernels, a warp per row and four warps per row, each loading the
    row's tiles and operands in the output pass, or with them kept in registers
    from the first pass (KEEP, PREFETCH); and the four-warp kernel over a grid
    of two programs, each looping over its chunk of the rows (LOOP: off CUDA
    a plan counts one SM, so chunks of 5 and 4 rows, or 6 and 6, crossing the
    per-frame operands' frames of 3 rows)."""
    proc = run_python(CHILD, kernel, env={"TRITON_INTERPRET": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cases_bad"] == []


# LOOP's chunking against one program per row, on outputs that start as NaN
LOOP_CHILD = textwrap.dedent(
    r"""
    import json
    import torch

    nan_like = torch.full_like
    torch.empty_like = lambda t, **kw: nan_like(t, float("nan"), **kw)
    from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb

    kb.torch.cuda.current_device = lambda: -1
    torch.manual_seed(0)
    results = []
    # (batch, seq, programs per SM; off CUDA one SM): chunks of 2, 2, 2 and
    # an empty program; one row each (more programs than rows); 3, 3, 3 and
    # an empty one; chunks of 4 across the batch boundary. Frames of 3 rows.
    for batch, seq, loop in ((1, 6, 4), (1, 3, 4), (1, 9, 4), (2, 6, 3)):
        d = 68
        x = torch.randn(batch, seq, d).to(torch.bfloat16)
        frames = (batch, 3, 1, d)
        r, g = torch.randn_like(x), torch.randn(frames)
        sc, sh = torch.randn(frames), torch.randn(frames).to(torch.bfloat16)
        w, b = torch.randn(d), torch.randn(d)
        outs = []
        for name in ("block-keep", f"block-keep-loop{loop}"):
            tuning = kb._variant(name)
            grid = kb._Plan(x, w, b, 1e-6, r, g, sc, sh, tuning=tuning).grid[0]
            outs.append(kb._launch_fp32_norm(
                x, w, b, 1e-6, residual=r, gate=g, scale=sc, shift=sh,
                tuning=tuning))
        (y1, r1), (y2, r2) = outs
        same = torch.equal(y1, y2) and torch.equal(r1, r2)
        results.append([batch, seq, loop, grid, same, bool(y2.isnan().any())])
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(triton is None, reason="needs Triton (its interpreter)")
def test_loop_chunks_cover_every_row_once_under_the_interpreter():
    """LOOP over grids smaller than the rows, equal to them, with empty
    trailing programs and with chunks across batches: every row written,
    bitwise as one program per row writes it."""
    proc = run_python(LOOP_CHILD, env={"TRITON_INTERPRET": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == [
        [1, 6, 4, 4, True, False],
        [1, 3, 4, 3, True, False],
        [1, 9, 4, 4, True, False],
        [2, 6, 3, 3, True, False],
    ]
