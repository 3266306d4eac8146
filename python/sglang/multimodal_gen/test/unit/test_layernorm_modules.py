# SPDX-License-Identifier: Apache-2.0
"""The rest of the normalization module: RMSNorm, LayerNorm, ScaleResidual and the
norm + modulation modules, against hand-written eager formulas (CPU always, CUDA
where present)."""

import pytest
import torch
import torch.nn.functional as F

from sglang.multimodal_gen.runtime.layers import layernorm as ln
from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp

from _shared import DEVICES

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def rnd(*shape, device="cpu", dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)


def fill_(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 1.0)
    return module


def ref_ln(x, w, b, eps):
    def fp32(p):
        return None if p is None else p.float()

    return F.layer_norm(x.float(), (x.shape[-1],), fp32(w), fp32(b), eps).to(x.dtype)


def test_registered_op_names():
    for name, cls in {
        "rms_norm": ln.RMSNorm,
        "layer_norm": ln.LayerNorm,
        "fp32_layer_norm": ln.FP32LayerNorm,
    }.items():
        assert CustomOp.op_registry[name] is cls
        assert cls.name == name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_formula(device, dtype):
    m = fill_(ln.RMSNorm(64, eps=1e-6)).to(device)
    x = rnd(3, 5, 64, device=device, dtype=dtype, seed=1)
    xf = x.float()
    want = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * m.weight).to(
        dtype
    )
    with torch.no_grad():
        assert torch.equal(m(x), want)


@pytest.mark.parametrize("device", DEVICES)
def test_rms_norm_with_residual_returns_both(device):
    m = fill_(ln.RMSNorm(32)).to(device)
    x = rnd(4, 32, device=device, dtype=torch.bfloat16, seed=1)
    residual = rnd(4, 32, device=device, dtype=torch.bfloat16, seed=2)
    with torch.no_grad():
        out, new_residual = m(x, residual)
    summed = x.float() + residual.float()
    assert torch.equal(new_residual, summed.to(torch.bfloat16))
    inv = torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)
    assert torch.equal(out, (summed * inv * m.weight).to(torch.bfloat16))


def test_rms_norm_variance_override_and_shape_check():
    m = fill_(ln.RMSNorm(16, var_hidden_size=8))
    x = rnd(2, 16, seed=3)
    want = x * torch.rsqrt(x[..., :8].pow(2).mean(-1, keepdim=True) + 1e-6) * m.weight
    with torch.no_grad():
        assert torch.equal(m(x), want)
        with pytest.raises(ValueError, match="hidden_size"):
            m(rnd(2, 15))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_computes_in_input_dtype(device, dtype):
    m = fill_(ln.LayerNorm(48, eps=1e-5, device=device, dtype=dtype))
    x = rnd(3, 48, device=device, dtype=dtype, seed=4)
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    want = (m.weight * ((x - mean) * torch.rsqrt(var + 1e-5)) + m.bias).to(dtype)
    with torch.no_grad():
        assert torch.equal(m(x), want)
    assert "eps=1e-05" in repr(m)


def test_layer_norm_without_affine_has_no_parameters():
    m = ln.LayerNorm(8, elementwise_affine=False)
    assert m.weight is None and m.bias is None and list(m.parameters()) == []


@pytest.mark.parametrize("device", DEVICES)
def test_scale_residual_gate_layouts(device):
    m = ln.ScaleResidual()
    residual = rnd(2, 8, 16, device=device, seed=1)
    x = rnd(2, 8, 16, device=device, seed=2)
    gate3 = rnd(2, 1, 16, device=device, seed=3)
    assert torch.equal(m(residual, x, gate3), residual + x * gate3)
    gate4 = rnd(2, 4, 1, 16, device=device, seed=4)
    per_frame = gate4.repeat_interleave(2, dim=1).squeeze(2)
    assert torch.equal(m(residual, x, gate4), residual + x * per_frame)
    gate2 = rnd(2, 16, device=device, seed=5)
    assert torch.equal(m(residual, x, gate2), residual + x * gate2[:, None, :])


def _chain(norm_fn, x, shift, scale):
    return (norm_fn(x) * (1 + scale) + shift).to(x.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_scale_shift_native(device, dtype, affine):
    m = fill_(ln.LayerNormScaleShift(64, eps=1e-6, elementwise_affine=affine))
    m = m.to(device)
    assert isinstance(m.norm, ln.FP32LayerNorm)
    assert m.norm.weight is None or m.norm.weight.dtype == torch.float32
    x = rnd(2, 8, 64, device=device, dtype=dtype, seed=1)
    shift = rnd(2, 1, 64, device=device, seed=2, scale=0.1)
    scale = rnd(2, 1, 64, device=device, seed=3, scale=0.1)
    with torch.no_grad():
        out = m.forward_native(x, shift, scale)
        assert torch.equal(m(x, shift, scale), out)
    want = _chain(
        lambda t: ref_ln(t, m.norm.weight, m.norm.bias, 1e-6), x, shift, scale
    )
    assert out.dtype == dtype
    assert torch.equal(out, want)


@pytest.mark.parametrize("device", DEVICES)
def test_layer_norm_scale_shift_per_frame(device):
    m = ln.LayerNormScaleShift(32, eps=1e-6).to(device)
    x = rnd(2, 12, 32, device=device, dtype=torch.bfloat16, seed=1)
    scale = rnd(2, 3, 1, 32, device=device, seed=2, scale=0.1)
    shift = rnd(2, 3, 1, 32, device=device, seed=3, scale=0.1)
    with torch.no_grad():
        out = m(x, shift, scale)
    normed = ref_ln(x, None, None, 1e-6)
    per = [t.repeat_interleave(4, dim=1).squeeze(2) for t in (scale, shift)]
    want = (normed * (1 + per[0]) + per[1]).to(torch.bfloat16)
    assert torch.equal(out, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("gate_kind", ["int", "3d", "4d"])
def test_scale_residual_layer_norm_scale_shift_native(device, dtype, gate_kind):
    m = fill_(
        ln.ScaleResidualLayerNormScaleShift(64, eps=1e-6, elementwise_affine=True)
    )
    m = m.to(device)
    residual = rnd(2, 8, 64, device=device, dtype=dtype, seed=1)
    x = rnd(2, 8, 64, device=device, dtype=dtype, seed=2)
    gate = {
        "int": 1,
        "3d": rnd(2, 1, 64, device=device, seed=3),
        "4d": rnd(2, 2, 1, 64, device=device, seed=3),
    }[gate_kind]
    shift = rnd(2, 1, 64, device=device, seed=4, scale=0.1)
    scale = rnd(2, 1, 64, device=device, seed=5, scale=0.1)
    with torch.no_grad():
        out, res_out = m(residual, x, gate, shift, scale)
    if gate_kind == "int":
        r = residual + x
    elif gate_kind == "3d":
        r = residual + x * gate
    else:
        r = residual + x * gate.repeat_interleave(4, dim=1).squeeze(2)
    normed = ref_ln(r, m.norm.weight, m.norm.bias, 1e-6)
    assert out.dtype == dtype and res_out.dtype == dtype
    assert torch.equal(res_out, r.to(dtype))
    assert torch.equal(out, (normed * (1 + scale) + shift).to(dtype))


@pytest.mark.parametrize(
    "cls", [ln.RMSNormScaleShift, ln.ScaleResidualRMSNormScaleShift]
)
def test_rms_variants_use_rms_norm(cls):
    m = cls(32, eps=1e-6)
    assert isinstance(m.norm, ln.RMSNorm)
    x = rnd(1, 4, 32, seed=1)
    shift = rnd(1, 1, 32, seed=2)
    scale = rnd(1, 1, 32, seed=3)
    with torch.no_grad():
        if cls is ln.RMSNormScaleShift:
            out = m(x, shift, scale)
            want = m.norm(x) * (1 + scale) + shift
        else:
            out, res = m(x, x, 1, shift, scale)
            assert torch.equal(res, x + x)
            want = m.norm(x + x) * (1 + scale) + shift
    assert torch.equal(out, want)


def test_fused_module_constructor_signatures():
    for cls in (ln.LayerNormScaleShift, ln.ScaleResidualLayerNormScaleShift):
        m = cls(16, eps=1e-5, elementwise_affine=True, dtype=torch.float32, prefix="p")
        assert m.eps == 1e-5 and m.norm.eps == 1e-5
        assert m.norm.weight.dtype == torch.float32
    with pytest.raises(NotImplementedError):
        ln._make_norm("group", 8, 1e-6, False, torch.float32)


@pytest.mark.parametrize("gate", [2, 0, -1])
def test_int_gate_other_than_one_is_a_value_error(gate):
    m = ln.ScaleResidualLayerNormScaleShift(8)
    t = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="gate"):
        with torch.no_grad():
            m(t, t, gate, t, t)


@pytest.mark.parametrize("gate", [1.0, True, "1", None])
def test_gate_of_another_type_is_a_type_error(gate):
    m = ln.ScaleResidualLayerNormScaleShift(8)
    t = torch.zeros(1, 2, 8)
    with pytest.raises(TypeError, match="Gate type"):
        with torch.no_grad():
            m(t, t, gate, t, t)


def test_per_frame_modulation_must_divide_the_sequence():
    m = ln.LayerNormScaleShift(8)
    x = torch.zeros(1, 10, 8)
    per_frame = torch.zeros(1, 3, 1, 8)
    with pytest.raises(ValueError, match="divisible"):
        with torch.no_grad():
            m(x, per_frame, per_frame)
