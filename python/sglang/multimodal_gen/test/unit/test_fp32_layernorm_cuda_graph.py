# SPDX-License-Identifier: Apache-2.0
"""CUDA graph capture and replay of FP32LayerNorm and the fused modules.

A no-grad (or ``inference_mode``) forward is captured after a warm-up on a side
stream, as PyTorch recommends; the warm-up also fills the fp32 parameter cache
and runs the fast paths' first-use proofs. The graph is replayed, the parameters
(and the static inputs) are then updated in place, and it is replayed again
without re-capture: the contract is that the captured kernels read the live
parameters (the fp32 cast is recorded in the graph, the cache is bypassed during
capture), so every replay must equal the uncached reference
``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)`` (for
the fused modules, the eager chain on that reference) with the current
parameters. Covers bf16/fp16/fp32 parameters and inputs, affine / weight-only /
no-affine, the ATen reduced-precision path, the cached path, the Triton kernel
(size gate lifted) and the fused kernels. GPU only.
"""

import pytest
import torch
import torch.nn.functional as F

from sglang.kernels.ops.diffusion import fp32_layernorm_path
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_bitexact as kb
from sglang.kernels.ops.diffusion.norm import fp32_layernorm_select as sel
from sglang.multimodal_gen.runtime.layers import layernorm as ln

HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
DIM, BATCH, SEQ = 256, 2, 32


def _dtype_id(d):
    return str(d).replace("torch.", "")


@pytest.fixture(params=["default", "triton_at_any_size"])
def route(request, monkeypatch):
    """The default size gate, or every size routed to the Triton kernels."""
    if request.param == "triton_at_any_size":
        if kb.triton is None:
            pytest.skip("needs Triton")
        monkeypatch.setattr(sel, "_TRITON_MIN_ELEMENTS", 0)
    return request.param


def ref_ln(x, weight, bias, eps, shape=None):
    def fp32(p):
        return None if p is None else p.detach().float().to(x.device)

    shape = (x.shape[-1],) if shape is None else shape
    return F.layer_norm(x.float(), shape, fp32(weight), fp32(bias), eps).to(x.dtype)


def fill_(module, gen):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    return module


def rnd(gen, *shape, dtype=torch.float32, scale=1.0, offset=0.0):
    t = torch.randn(*shape, generator=gen) * scale + offset
    return t.to("cuda", dtype)


def capture(fn, grad_mode):
    """Warm up on a side stream, then capture ``fn`` once."""
    ctx = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), ctx():
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), ctx():
        out = fn()
    return graph, out


def replay(graph):
    graph.replay()
    torch.cuda.synchronize()


def assert_equal(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert torch.equal(got, want), (
        f"{what}: {(got != want).sum().item()} of {got.numel()} differ, max "
        f"{(got.float() - want.float()).abs().max().item()}"
    )


def _mutations(gen):
    """In-place parameter updates a running server may make (LoRA merge, etc.)."""

    def add_(m):
        m.weight.add_(rnd(gen, m.weight.shape, dtype=m.weight.dtype, scale=0.25))

    def mul_(m):
        (m.bias if m.bias is not None else m.weight).mul_(-1.5)

    def copy_(m):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) + 1.0)

    def load_state_dict(m):
        m.load_state_dict(
            {k: torch.randn(v.shape, generator=gen) for k, v in m.state_dict().items()}
        )

    return [add_, mul_, copy_, load_state_dict]


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("params", ["affine", "weight-only", "none"])
@pytest.mark.parametrize("param_dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("x_dtype", DTYPES, ids=_dtype_id)
def test_cuda_graph_norm_replay_reads_live_params(
    x_dtype, param_dtype, params, grad_mode, route
):
    gen = torch.Generator().manual_seed(11)
    m = ln.FP32LayerNorm(
        DIM,
        eps=1e-6,
        elementwise_affine=params != "none",
        bias=params == "affine",
        device="cuda",
        dtype=param_dtype,
    )
    fill_(m, gen)
    x = rnd(gen, BATCH * SEQ, DIM, dtype=x_dtype, scale=2.0, offset=0.25)
    path = fp32_layernorm_path(x, (DIM,), m.weight, m.bias)
    graph, out = capture(lambda: m(x), grad_mode)

    def check(what):
        replay(graph)
        assert_equal(out, ref_ln(x, m.weight, m.bias, m.eps), f"{path}: {what}")

    check("first replay")
    check("second replay")
    if params != "none":
        with torch.no_grad():
            for mutate in _mutations(gen):
                mutate(m)
                check(f"after {mutate.__name__}")
    with torch.no_grad():
        x.copy_(rnd(gen, *x.shape, dtype=x_dtype, scale=3.0))
    check("after a new static input")
    # eager calls after the replays still see the current parameters
    with torch.no_grad():
        assert_equal(m(x), ref_ln(x, m.weight, m.bias, m.eps), f"{path}: eager")


def _modulation(layout, gen, dtype):
    if layout == "[B,1,D]":
        return rnd(gen, BATCH, 1, DIM, dtype=dtype, scale=0.3)
    if layout == "[B,F,1,D]":
        return rnd(gen, BATCH, 4, 1, DIM, dtype=dtype, scale=0.3)
    if layout == "chunk":  # Wan: a [B, 1, D] slice of a [B, 6, D] table
        return rnd(gen, BATCH, 6, DIM, dtype=dtype, scale=0.3).chunk(6, dim=1)[1]
    raise AssertionError(layout)


def _expand(t):
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        return t
    return t.repeat_interleave(SEQ // t.shape[1], dim=1).squeeze(2)


def _chain(m, x, shift, scale, residual=None, gate=None):
    def norm(t):
        return ref_ln(t, m.norm.weight, m.norm.bias, m.norm.eps)

    if residual is None:
        return ((norm(x) * (1 + _expand(scale)) + _expand(shift)).to(x.dtype),)
    r = residual + x if isinstance(gate, int) else residual + x * _expand(gate)
    out = norm(r) * (1 + _expand(scale)) + _expand(shift)
    return out.to(x.dtype), r.to(x.dtype)


def _norm_dtype(kind):
    return {"fp32-affine": torch.float32, "bf16-affine": torch.bfloat16}.get(kind)


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("norm_kind", ["fp32-affine", "bf16-affine", "no-affine"])
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32], ids=_dtype_id)
@pytest.mark.parametrize("layout", ["[B,1,D]", "[B,F,1,D]", "chunk"])
@pytest.mark.parametrize("module", ["norm_scale_shift", "scale_residual", "gate_1"])
def test_cuda_graph_fused_modules_replay_reads_live_params(
    module, layout, x_dtype, norm_kind, grad_mode, route
):
    gen = torch.Generator().manual_seed(13)
    affine = norm_kind != "no-affine"
    pdtype = _norm_dtype(norm_kind) or torch.float32
    cls = (
        ln.LayerNormScaleShift
        if module == "norm_scale_shift"
        else ln.ScaleResidualLayerNormScaleShift
    )
    m = fill_(cls(DIM, eps=1e-6, elementwise_affine=affine, dtype=pdtype), gen)
    m = m.cuda()
    x = rnd(gen, BATCH, SEQ, DIM, dtype=x_dtype, scale=2.0, offset=0.25)
    shift = _modulation(layout, gen, torch.float32)
    scale = _modulation(layout, gen, torch.float32)
    if module == "norm_scale_shift":
        args = (x, shift, scale)
        ref_args = dict(shift=shift, scale=scale)
    else:
        residual = rnd(gen, BATCH, SEQ, DIM, dtype=x_dtype, scale=2.0)
        gate = 1 if module == "gate_1" else _modulation(layout, gen, torch.float32)
        args = (residual, x, gate, shift, scale)
        ref_args = dict(shift=shift, scale=scale, residual=residual, gate=gate)
    graph, out = capture(lambda: m(*args), grad_mode)
    out = out if isinstance(out, tuple) else (out,)

    def check(what):
        replay(graph)
        want = _chain(m, x, **ref_args)
        assert len(out) == len(want)
        for i, (g, w) in enumerate(zip(out, want)):
            assert_equal(g, w, f"{what} (output {i})")

    check("first replay")
    if affine:
        with torch.no_grad():
            for mutate in _mutations(gen):
                mutate(m.norm)
                check(f"after {mutate.__name__}")
    with torch.no_grad():
        x.copy_(rnd(gen, *x.shape, dtype=x_dtype))
        scale.mul_(-2.0)  # modulation tensors are static inputs too
    check("after new static inputs")
