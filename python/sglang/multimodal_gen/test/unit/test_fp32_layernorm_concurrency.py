# SPDX-License-Identifier: Apache-2.0
"""FP32LayerNorm and the fused modules called from several threads at once.

Threads released together by a ``threading.Barrier`` call the same module while
its fp32 parameter cache is cold (dropped, or made stale by an in-place update
made by the barrier's action between rounds), many rounds in a row, with the
interpreter's switch interval lowered so the threads interleave inside the cache
code; every output must equal the uncached reference
``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)`` for
the parameters of its round. Also: threads that each mutate and call their own
module (standalone and fused) side by side, threads mixing ``no_grad`` and
``inference_mode``, and, on CUDA, several threads racing through the fast paths'
first-use proofs.
"""

import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_select as sel
from sglang.multimodal_gen.runtime.layers import layernorm as ln

from _shared import DEVICES, HAS_CUDA

THREADS = 4
ROUNDS = 40
DIM = 128


@pytest.fixture(autouse=True)
def _interleave():
    """Switch threads every microsecond so they interleave inside the cache code."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def ref_ln(x, weight, bias, eps):
    def fp32(p):
        return None if p is None else p.detach().float().to(x.device)

    return F.layer_norm(x.float(), (x.shape[-1],), fp32(weight), fp32(bias), eps).to(
        x.dtype
    )


def make_norm(device, dtype, seed=0):
    m = ln.FP32LayerNorm(DIM, eps=1e-6, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    return m


def run_threads(target, n=THREADS):
    """Run ``target(i)`` in ``n`` threads; re-raise the first failure."""
    errors = []

    def wrap(i):
        try:
            target(i)
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _input_dtypes(device):
    # on CUDA, bf16 input with bf16 params takes ATen's reduced kernel, which
    # needs no cache; fp32 input keeps every thread on the cached route
    return [torch.float32] if device == "cuda" else [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16])
def test_concurrency_same_module_cold_cache(device, param_dtype):
    m = make_norm(device, param_dtype)
    gen = torch.Generator().manual_seed(1)
    dtypes = _input_dtypes(device)
    xs = [
        (torch.randn(THREADS, 7, DIM, generator=gen) * 2 + 0.25).to(device, dtype)
        for dtype in dtypes
    ]
    snapshots = []  # the parameters of each round

    def between_rounds():
        # runs in one thread while all others wait at the barrier: no forward is
        # in flight. Even rounds: drop the cache; odd rounds: make it stale.
        r = len(snapshots)
        with torch.no_grad():
            if r % 2:
                m.weight.add_(0.125 * r)
                m.bias.mul_(-1.0)
            else:
                m._drop_fp32_cache()
        snapshots.append((m.weight.detach().clone(), m.bias.detach().clone()))

    barrier = threading.Barrier(THREADS, action=between_rounds)
    outs = [[None] * ROUNDS for _ in range(THREADS)]

    def worker(i):
        for r in range(ROUNDS):
            barrier.wait(timeout=60)
            with torch.no_grad():
                outs[i][r] = m(xs[r % len(xs)][i])

    run_threads(worker)
    assert len(snapshots) == ROUNDS
    for r, (w, b) in enumerate(snapshots):
        for i in range(THREADS):
            x = xs[r % len(xs)][i]
            want = ref_ln(x, w, b, m.eps)
            assert outs[i][r].dtype == want.dtype
            assert torch.equal(outs[i][r], want), f"round {r} thread {i}"


@pytest.mark.parametrize("device", DEVICES)
def test_concurrency_mixed_grad_modes_share_a_cache(device):
    """``inference_mode`` threads fill the cache with inference tensors that
    ``no_grad`` threads then read (and the other way round)."""
    m = make_norm(device, torch.bfloat16)
    x = (torch.randn(5, DIM) * 2).to(device, torch.float32)
    barrier = threading.Barrier(THREADS, action=m._drop_fp32_cache)
    outs = [[None] * ROUNDS for _ in range(THREADS)]

    def worker(i):
        ctx = torch.inference_mode if i % 2 else torch.no_grad
        for r in range(ROUNDS):
            barrier.wait(timeout=60)
            with ctx():
                outs[i][r] = m(x)
            # grad-mode calls (no cache) interleave with the cached ones
            if r % 5 == 0:
                outs[i][r] = torch.stack([outs[i][r], m(x).detach()])

    run_threads(worker)
    want = ref_ln(x, m.weight, m.bias, m.eps)
    for i in range(THREADS):
        for r in range(ROUNDS):
            got = outs[i][r]
            for g in got if r % 5 == 0 else [got]:
                assert torch.equal(g, want), f"thread {i} round {r}"


def _own_module_worker(device, i, rounds):
    """One thread's lifecycle on its own module; returns (outputs, references)."""
    gen = torch.Generator().manual_seed(100 + i)
    kind = ("norm", "norm_scale_shift", "scale_residual")[i % 3]
    if kind == "norm":
        m = make_norm(device, (torch.bfloat16, torch.float16)[i % 2], seed=i)
        norm = m
    else:
        cls = (
            ln.LayerNormScaleShift
            if kind == "norm_scale_shift"
            else ln.ScaleResidualLayerNormScaleShift
        )
        m = cls(DIM, eps=1e-6, elementwise_affine=True, dtype=torch.bfloat16)
        m = m.to(device)
        norm = m.norm
    got, want = [], []
    for r in range(rounds):
        op = r % 4
        with torch.no_grad():
            if op == 0:
                norm.weight.add_(torch.randn(DIM, generator=gen).to(device) * 0.1)
            elif op == 1:
                norm.bias.copy_(torch.randn(DIM, generator=gen))
            elif op == 2:
                # release, then refill: the allocator may hand back the address
                old = norm.weight.dtype
                norm.weight.data = torch.empty(0, device=device, dtype=old)
                norm.weight.data = torch.randn(DIM, generator=gen).to(device, old)
            else:
                m.to((torch.bfloat16, torch.float16)[(r // 4) % 2])
        x = (torch.randn(2, 6, DIM, generator=gen) * 2).to(device, torch.float32)

        def norm_fn(t):
            return ref_ln(t, norm.weight, norm.bias, norm.eps)

        with torch.no_grad():
            if kind == "norm":
                got.append(m(x))
                want.append(norm_fn(x))
            else:
                shift = torch.randn(2, 1, DIM, generator=gen).to(device) * 0.3
                scale = torch.randn(2, 1, DIM, generator=gen).to(device) * 0.3
                if kind == "norm_scale_shift":
                    got.append(m(x, shift, scale))
                    want.append((norm_fn(x) * (1 + scale) + shift).to(x.dtype))
                else:
                    res = (torch.randn(2, 6, DIM, generator=gen) * 2).to(device)
                    out, res_out = m(res, x, 1, shift, scale)
                    r_ = res + x
                    got.append(torch.stack([out, res_out]))
                    mod = (norm_fn(r_) * (1 + scale) + shift).to(x.dtype)
                    want.append(torch.stack([mod, r_.to(x.dtype)]))
    return got, want


@pytest.mark.parametrize("device", DEVICES)
def test_concurrency_threads_mutating_their_own_modules(device):
    rounds = 60
    barrier = threading.Barrier(THREADS)
    results = [None] * THREADS

    def worker(i):
        barrier.wait(timeout=60)
        results[i] = _own_module_worker(device, i, rounds)

    run_threads(worker)
    for i, (got, want) in enumerate(results):
        assert len(got) == rounds
        for r, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and torch.equal(g, w), f"thread {i} round {r}"


def _proof_race_once(rep):
    sel._PROOFS = sel.ProofRegistry()  # all unproven (restored by monkeypatch)
    mods = {
        "aten_reduced": make_norm("cuda", torch.bfloat16, seed=rep),
        "fp32_params": make_norm("cuda", torch.float32, seed=rep),
    }
    fused = ln.ScaleResidualLayerNormScaleShift(
        DIM, eps=1e-6, elementwise_affine=True
    ).cuda()
    gen = torch.Generator().manual_seed(rep)
    x = (torch.randn(2, 33, DIM, generator=gen) * 2).to("cuda", torch.bfloat16)
    res = torch.randn(2, 33, DIM, generator=gen).to("cuda", torch.bfloat16)
    mod = torch.randn(2, 1, DIM, generator=gen).cuda() * 0.3
    barrier = threading.Barrier(THREADS)
    outs = [None] * THREADS

    def worker(i):
        barrier.wait(timeout=60)
        with torch.no_grad():
            outs[i] = (
                mods["aten_reduced"](x),
                mods["fp32_params"](x),
                *fused(res, x, mod, mod, mod),
            )
        torch.cuda.current_stream().synchronize()

    run_threads(worker)
    torch.cuda.synchronize()
    r = res + x * mod
    norm = fused.norm
    want = (
        ref_ln(x, mods["aten_reduced"].weight, mods["aten_reduced"].bias, 1e-6),
        ref_ln(x, mods["fp32_params"].weight, mods["fp32_params"].bias, 1e-6),
        (ref_ln(r, norm.weight, norm.bias, 1e-6) * (1 + mod) + mod).to(x.dtype),
        r.to(x.dtype),
    )
    names = ("aten_reduced", "fp32 params", "fused", "fused residual")
    for i in range(THREADS):
        for name, got, w in zip(names, outs[i], want):
            assert torch.equal(got, w), f"rep {rep} thread {i}: {name}"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("triton_gate", ["default", "any_size"])
def test_concurrency_fast_path_proofs_race(monkeypatch, triton_gate):
    """Threads reach the first-use proofs of the fast paths at the same time."""
    if triton_gate == "any_size":
        if kb.triton is None:
            pytest.skip("needs Triton")
        monkeypatch.setattr(sel, "_TRITON_MIN_ELEMENTS", 0)
    monkeypatch.setattr(sel, "_PROOFS", sel._PROOFS)  # restore it afterwards
    for rep in range(3):
        _proof_race_once(rep)
