# SPDX-License-Identifier: Apache-2.0
"""Bad and edge inputs of FP32LayerNorm and the fused modulation modules.

Edge inputs (no tokens, non-contiguous and broadcast views, 1-D to 4-D inputs,
multi-dimensional ``normalized_shape``, float64, extreme magnitudes, constant
rows, NaN/inf in the input or in the parameters, ``meta`` tensors, input and
parameters on different devices) must give exactly what the uncached reference
``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)`` gives:
same NaN positions, equal bits elsewhere. Bad inputs must fail with a clear
error: ``ValueError`` for a mismatched trailing shape, ``TypeError`` for integer,
bool, complex or non-tensor input; for the fused modules ``ValueError`` for an
int gate other than 1 and for per-frame modulation whose frames do not divide
the sequence, ``TypeError`` for a gate of another type, and an error for
modulation or residual shapes that do not broadcast. Each case runs with and
without grad where that matters, on CPU and CUDA, over input and parameter dtypes.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from sglang.multimodal_gen.runtime.layers import layernorm as ln

from _shared import DEVICES, HAS_CUDA, one_cpu_thread  # noqa: F401 (autouse fixture)

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
DIM = 64


def _dtype_id(d):
    return str(d).replace("torch.", "")


def ref_ln(x, shape, weight, bias, eps):
    def fp32(p):
        return None if p is None else p.detach().float().to(x.device)

    return F.layer_norm(x.float(), shape, fp32(weight), fp32(bias), eps).to(x.dtype)


def make_norm(device, param_dtype, shape=DIM, seed=0, **kwargs):
    m = ln.FP32LayerNorm(shape, eps=1e-6, device=device, dtype=param_dtype, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    return m


def rnd(*shape, device="cpu", dtype=torch.float32, seed=1, scale=2.0, offset=0.25):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=gen) * scale + offset
    return t.to(device=device, dtype=dtype)


def same_bits_or_nan(got, want):
    """Equal dtype and shape, NaN exactly where the reference has NaN, equal bits
    (infinities included) everywhere else."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    got_nan, want_nan = torch.isnan(got), torch.isnan(want)
    if not torch.equal(got_nan, want_nan):
        return False
    return torch.equal(got[~got_nan], want[~want_nan])


def check(m, x, grad=False):
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        y = m(x)
    with torch.no_grad():
        want = ref_ln(x, tuple(m.normalized_shape), m.weight, m.bias, m.eps)
    assert y.device == x.device
    assert same_bits_or_nan(y.detach(), want), (y, want)
    return y


PARAM_DTYPES = [
    pytest.param(torch.bfloat16, id="p_bf16"),
    pytest.param(torch.float32, id="p_fp32"),
    pytest.param(None, id="no_affine"),
]


def norm_for(device, param_dtype, **kwargs):
    if param_dtype is None:
        return make_norm(device, None, elementwise_affine=False, **kwargs)
    return make_norm(device, param_dtype, **kwargs)


# --------------------------------------------------------------------------
# FP32LayerNorm: edge inputs equal the reference
# --------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES)
@pytest.mark.parametrize("shape", [(0, DIM), (2, 0, DIM), (0, 0, 0, DIM)])
def test_edge_empty_input(device, dtype, param_dtype, shape):
    m = norm_for(device, param_dtype)
    x = torch.empty(shape, device=device, dtype=dtype)
    for grad in (False, True):
        y = check(m, x, grad=grad)
        assert y.shape == shape and y.dtype == dtype


def _layouts(device, dtype):
    base = rnd(9, 2 * DIM, device=device, dtype=dtype)
    flat = torch.empty(6 * DIM + 1, device=device, dtype=dtype)
    flat[1:].copy_(rnd(6 * DIM, device=device, dtype=dtype, seed=2))
    return {
        "row-strided": base[:, :DIM],
        "column-offset": base[:, 3 : DIM + 3],
        "transposed": base[:, :DIM].t().contiguous().t(),
        "every-other-row": base[::2, DIM:],
        "every-other-column": base[:, ::2],
        "broadcast-rows": base[:1, :DIM].expand(5, DIM),
        "misaligned": flat[1:].view(6, DIM),
        "permuted-3d": rnd(DIM, 3, 4, device=device, dtype=dtype).permute(1, 2, 0),
        "channels-last-4d": rnd(2, 5, 3, DIM, device=device, dtype=dtype)
        .permute(0, 3, 1, 2)
        .contiguous(memory_format=torch.channels_last)
        .permute(0, 2, 3, 1),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES)
def test_edge_non_contiguous_inputs(device, dtype, param_dtype):
    m = norm_for(device, param_dtype)
    for name, x in _layouts(device, dtype).items():
        assert x.shape[-1] == DIM, name
        for grad in (False, True):
            y = check(m, x, grad=grad)
            assert y.shape == x.shape, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES)
@pytest.mark.parametrize(
    "shape", [(DIM,), (1, DIM), (3, DIM), (2, 3, DIM), (2, 3, 4, DIM)], ids=str
)
def test_edge_1d_to_4d_inputs(device, dtype, param_dtype, shape):
    m = norm_for(device, param_dtype)
    x = rnd(*shape, device=device, dtype=dtype)
    check(m, x)
    check(m, x)  # warm cache
    check(m, x, grad=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", ["fp32", "same"])
def test_edge_multi_dim_normalized_shape(device, dtype, param_dtype):
    pdtype = torch.float32 if param_dtype == "fp32" else dtype
    m = make_norm(device, pdtype, shape=(4, 16))
    for shape in [(4, 16), (3, 4, 16), (2, 3, 4, 16)]:
        check(m, rnd(*shape, device=device, dtype=dtype))
    with pytest.raises(ValueError, match="normalized_shape"):
        with torch.no_grad():
            m(rnd(3, 16, 4, device=device, dtype=dtype))
    with pytest.raises(ValueError, match="normalized_shape"):
        with torch.no_grad():
            m(rnd(16, device=device, dtype=dtype))  # fewer dims than the shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES)
def test_edge_float64_input(device, param_dtype):
    m = norm_for(device, param_dtype)
    x = rnd(3, DIM, device=device, dtype=torch.float64)
    y = check(m, x)
    assert y.dtype == torch.float64  # computed in fp32, returned in the input dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES)
def test_edge_extreme_magnitudes_and_constant_rows(device, dtype, param_dtype):
    m = norm_for(device, param_dtype)
    fmax = torch.finfo(dtype).max
    tiny = torch.finfo(dtype).tiny
    rows = [
        torch.full((DIM,), 3.0),  # constant: zero variance
        torch.zeros(DIM),
        torch.linspace(-fmax, fmax, DIM),  # overflows fp32 variance for fp32
        torch.linspace(-1, 1, DIM) * tiny,  # subnormal-sized spread
        torch.linspace(-1, 1, DIM) * 1e-3 + 1e4,  # large mean, small spread
    ]
    x = torch.stack(rows).to(device, dtype)
    check(m, x)
    check(m, x, grad=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", PARAM_DTYPES)
def test_edge_nan_and_inf_in_input_propagate_like_the_reference(
    device, dtype, param_dtype
):
    m = norm_for(device, param_dtype)
    x = rnd(6, DIM, device=device, dtype=dtype)
    x[0, 5] = float("nan")
    x[1, 7] = float("inf")
    x[2, 9] = float("-inf")
    x[3, :] = float("nan")
    x[4, 1], x[4, 2] = float("inf"), float("-inf")
    # row 5 stays finite: it must not be touched by its neighbours
    for grad in (False, True):
        y = check(m, x, grad=grad)
        assert torch.isnan(y[0]).all() and torch.isfinite(y[5]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32], ids=_dtype_id)
def test_edge_nan_and_inf_in_parameters(device, dtype, param_dtype):
    m = make_norm(device, param_dtype)
    x = rnd(4, DIM, device=device, dtype=dtype)
    check(m, x)  # warm the cache, then poison it in place
    with torch.no_grad():
        m.weight[3] = float("nan")
        m.bias[5] = float("inf")
        m.weight[8] = 0.0
        m.bias[8] = float("-inf")
    y = check(m, x)
    assert torch.isnan(y[:, 3]).all() and torch.isinf(y[:, 5]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
def test_edge_meta_tensors(dtype):
    with torch.device("meta"):
        m = ln.FP32LayerNorm(DIM, dtype=torch.bfloat16)
    x = torch.empty(2, 5, DIM, device="meta", dtype=dtype)
    for _ in range(2):
        with torch.no_grad():
            y = m(x)
        assert y.is_meta and y.shape == x.shape and y.dtype == dtype
    # materialized afterwards: the meta-time cache must not leak into real calls
    m.to_empty(device="cpu")
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.bias.fill_(-1.0)
    check(m, rnd(2, 5, DIM, dtype=dtype))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32], ids=_dtype_id)
def test_edge_input_and_params_on_different_devices(dtype, param_dtype):
    for param_dev, x_dev in (("cpu", "cuda"), ("cuda", "cpu")):
        m = make_norm(param_dev, param_dtype)
        x = rnd(3, DIM, device=x_dev, dtype=dtype)
        check(m, x)
        with torch.no_grad():
            m.weight.mul_(-0.5)
        y = check(m, x)
        assert y.device.type == x_dev
        assert m.weight.device.type == param_dev


# --------------------------------------------------------------------------
# FP32LayerNorm: bad inputs fail clearly
# --------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("shape", [(3, DIM + 1), (3, DIM - 4), (DIM, 3), (1,)])
def test_edge_mismatched_trailing_shape_is_a_value_error(device, dtype, grad, shape):
    m = make_norm(device, torch.bfloat16)
    x = rnd(*shape, device=device, dtype=dtype)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    expected = re.escape(str(tuple(shape))) + r".*" + re.escape(str((DIM,)))
    with pytest.raises(ValueError, match=expected):
        with ctx:
            m(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype",
    [torch.int8, torch.uint8, torch.int32, torch.int64, torch.bool, torch.complex64],
    ids=_dtype_id,
)
@pytest.mark.parametrize("grad", [False, True])
def test_edge_non_floating_input_is_a_type_error(device, dtype, grad):
    m = make_norm(device, torch.bfloat16)
    x = torch.ones(2, DIM, device=device, dtype=dtype)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with pytest.raises(TypeError, match=rf"floating-point.*{dtype}"):
        with ctx:
            m(x)


@pytest.mark.parametrize("bad", [[1.0] * DIM, 1.0, None, "x"], ids=repr)
def test_edge_non_tensor_input_is_a_type_error(bad):
    m = make_norm("cpu", torch.bfloat16)
    with pytest.raises(TypeError, match="torch.Tensor"):
        with torch.no_grad():
            m(bad)


# --------------------------------------------------------------------------
# fused modules
# --------------------------------------------------------------------------
B, L = 2, 12


def fused(cls, device, param_dtype=torch.float32, affine=True):
    m = cls(DIM, eps=1e-6, elementwise_affine=affine, dtype=param_dtype)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + 1.0)
    return m.to(device)


def _expand(t, seq):
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        return t
    return t.repeat_interleave(seq // t.shape[1], dim=1).squeeze(2)


def chain(m, x, shift, scale, residual=None, gate=None):
    def norm(t):
        return ref_ln(t, (DIM,), m.norm.weight, m.norm.bias, m.norm.eps)

    seq = x.shape[1]
    shift, scale = _expand(shift, seq), _expand(scale, seq)
    if residual is None:
        return (norm(x) * (1 + scale) + shift).to(x.dtype)
    r = residual + x if isinstance(gate, int) else residual + x * _expand(gate, seq)
    return (norm(r) * (1 + scale) + shift).to(x.dtype), r.to(x.dtype)


def _mods(device, seq=L, frames=None, dtype=torch.float32):
    shape = (B, 1, DIM) if frames is None else (B, frames, 1, DIM)
    return (
        rnd(*shape, device=device, dtype=dtype, seed=4, scale=0.3, offset=0.0),
        rnd(*shape, device=device, dtype=dtype, seed=5, scale=0.3, offset=0.0),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("seq", [0, 1, L])
def test_edge_fused_empty_and_short_sequences(device, dtype, seq):
    m1 = fused(ln.LayerNormScaleShift, device)
    m2 = fused(ln.ScaleResidualLayerNormScaleShift, device)
    x = rnd(B, seq, DIM, device=device, dtype=dtype)
    res = rnd(B, seq, DIM, device=device, dtype=dtype, seed=9)
    shift, scale = _mods(device)
    gate = rnd(B, 1, DIM, device=device, seed=6, scale=0.5, offset=0.0)
    with torch.no_grad():
        assert same_bits_or_nan(m1(x, shift, scale), chain(m1, x, shift, scale))
        got = m2(res, x, gate, shift, scale)
    for g, w in zip(got, chain(m2, x, shift, scale, res, gate)):
        assert g.shape == (B, seq, DIM) and same_bits_or_nan(g, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float32], ids=_dtype_id)
def test_edge_fused_nan_and_inf_propagate_like_the_chain(device, dtype, param_dtype):
    m1 = fused(ln.LayerNormScaleShift, device, param_dtype)
    m2 = fused(ln.ScaleResidualLayerNormScaleShift, device, param_dtype)
    x = rnd(B, L, DIM, device=device, dtype=dtype)
    res = rnd(B, L, DIM, device=device, dtype=dtype, seed=9)
    x[0, 1, 2] = float("nan")
    x[1, 3, 4] = float("inf")
    res[0, 5, 6] = float("-inf")
    shift, scale = _mods(device)
    scale[1, 0, 7] = float("nan")
    gate = rnd(B, 1, DIM, device=device, seed=6, scale=0.5, offset=0.0)
    with torch.no_grad():
        assert same_bits_or_nan(m1(x, shift, scale), chain(m1, x, shift, scale))
        got = m2(res, x, gate, shift, scale)
    for g, w in zip(got, chain(m2, x, shift, scale, res, gate)):
        assert same_bits_or_nan(g, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gate", [2, 0, -1])
def test_edge_fused_int_gate_other_than_one_is_a_value_error(device, gate):
    m = fused(ln.ScaleResidualLayerNormScaleShift, device)
    x = rnd(B, L, DIM, device=device, dtype=torch.bfloat16)
    shift, scale = _mods(device)
    with pytest.raises(ValueError, match=f"gate.*{gate}"):
        with torch.no_grad():
            m(x, x, gate, shift, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gate", [1.0, True, False, "1", None, [1.0]], ids=repr)
def test_edge_fused_gate_of_another_type_is_a_type_error(device, gate):
    m = fused(ln.ScaleResidualLayerNormScaleShift, device)
    x = rnd(B, L, DIM, device=device, dtype=torch.bfloat16)
    shift, scale = _mods(device)
    with pytest.raises(TypeError, match=f"Gate type {type(gate).__name__}"):
        with torch.no_grad():
            m(x, x, gate, shift, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["gate", "scale", "shift", "scale+shift"])
def test_edge_fused_per_frame_frames_must_divide_the_sequence(device, which):
    m1 = fused(ln.LayerNormScaleShift, device)
    m2 = fused(ln.ScaleResidualLayerNormScaleShift, device)
    x = rnd(B, 10, DIM, device=device, dtype=torch.bfloat16)
    shift, scale = _mods(device)
    bad_shift, bad_scale = _mods(device, frames=3)  # 10 % 3 != 0
    gate = 1
    if which == "gate":
        gate = rnd(B, 3, 1, DIM, device=device, seed=6)
    if "scale" in which:
        scale = bad_scale
    if "shift" in which:
        shift = bad_shift
    with pytest.raises(ValueError, match="divisible by 3"):
        with torch.no_grad():
            m2(x, x, gate, shift, scale)
    if which != "gate":
        with pytest.raises(ValueError, match="divisible by 3"):
            with torch.no_grad():
                m1(x, shift, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frames", [1, 2, 3, 4, 6, 12])
def test_edge_fused_per_frame_that_divides_matches_the_chain(device, frames):
    m1 = fused(ln.LayerNormScaleShift, device)
    m2 = fused(ln.ScaleResidualLayerNormScaleShift, device)
    x = rnd(B, L, DIM, device=device, dtype=torch.bfloat16)
    shift, scale = _mods(device, frames=frames)
    gate = rnd(B, frames, 1, DIM, device=device, seed=6, scale=0.5, offset=0.0)
    with torch.no_grad():
        assert torch.equal(m1(x, shift, scale), chain(m1, x, shift, scale))
        got = m2(x, x, gate, shift, scale)
    for g, w in zip(got, chain(m2, x, shift, scale, x, gate)):
        assert torch.equal(g, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "bad",
    ["scale-dim", "shift-dim", "scale-batch", "gate-dim", "gate-seq", "residual-seq"],
)
def test_edge_fused_mismatched_modulation_shape_is_an_error(device, bad):
    m1 = fused(ln.LayerNormScaleShift, device)
    m2 = fused(ln.ScaleResidualLayerNormScaleShift, device)
    x = rnd(B, L, DIM, device=device, dtype=torch.bfloat16)
    residual = x
    shift, scale = _mods(device)
    gate = rnd(B, 1, DIM, device=device, seed=6)
    if bad == "scale-dim":
        scale = rnd(B, 1, DIM + 4, device=device)
    elif bad == "shift-dim":
        shift = rnd(B, 1, DIM // 2, device=device)
    elif bad == "scale-batch":
        scale = rnd(B + 1, 1, DIM, device=device)
    elif bad == "gate-dim":
        gate = rnd(B, 1, DIM + 4, device=device)
    elif bad == "gate-seq":
        gate = rnd(B, L + 1, DIM, device=device)
    else:
        residual = rnd(B, L + 1, DIM, device=device, dtype=torch.bfloat16)
    # the eager chain's broadcasting error (RuntimeError) or ours (ValueError)
    with pytest.raises((RuntimeError, ValueError)):
        with torch.no_grad():
            m2(residual, x, gate, shift, scale)
    if bad in ("scale-dim", "shift-dim", "scale-batch"):
        with pytest.raises((RuntimeError, ValueError)):
            with torch.no_grad():
                m1(x, shift, scale)


@pytest.mark.parametrize("device", DEVICES)
def test_edge_fused_input_with_the_wrong_hidden_size_is_a_value_error(device):
    m1 = fused(ln.LayerNormScaleShift, device)
    x = rnd(B, L, DIM + 4, device=device, dtype=torch.bfloat16)
    shift, scale = _mods(device)
    with pytest.raises(ValueError, match="normalized_shape"):
        with torch.no_grad():
            m1(x, shift, scale)
