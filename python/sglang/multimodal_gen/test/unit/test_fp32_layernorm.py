# SPDX-License-Identifier: Apache-2.0
"""FP32LayerNorm: bit-identity with the uncached fp32 reference and cache safety.

Every forward here is compared bit for bit with
``F.layer_norm(x.float(), shape, w.float(), b.float(), eps).to(x.dtype)``.

The class under test comes from ``$SGLANG_FP32LN_IMPL`` (a module path; default:
this tree's layernorm), so the same suite also runs against a copy loaded inside a
real SGLang install and against upstream's own class (see test/sglang_compat).
Only the class's public behaviour and ``_cached_fp32_param`` are used.
"""

import copy
import importlib
import io
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

_IMPL = os.environ.get(
    "SGLANG_FP32LN_IMPL", "sglang.multimodal_gen.runtime.layers.layernorm"
)
FP32LayerNorm = importlib.import_module(_IMPL).FP32LayerNorm

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
        ],
    ),
]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
HIDDEN = 96


def reference(m: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    def fp32(p):
        return None if p is None else p.detach().float().to(x.device)

    return F.layer_norm(
        x.float(), m.normalized_shape, fp32(m.weight), fp32(m.bias), m.eps
    ).to(x.dtype)


def assert_matches_reference(m, x, grad=False):
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        y = m(x)
    ref = reference(m, x)
    assert y.dtype == x.dtype
    assert y.shape == x.shape
    assert torch.equal(y, ref), (y.float() - ref.float()).abs().max().item()
    return y


def make_norm(device, param_dtype, hidden=HIDDEN, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = FP32LayerNorm(hidden, eps=1e-6, device=device, dtype=param_dtype, **kwargs)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p, dtype=torch.float32) * 0.5 + 1.0)
    return m


def make_input(device, dtype, hidden=HIDDEN, rows=(2, 17), seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*rows, hidden, generator=g) * 2.0 + 0.25
    return x.to(device=device, dtype=dtype)


def cache_entries(m):
    return [k for k in ("_weight_fp32_cache", "_bias_fp32_cache") if k in vars(m)]


def cached_weight(m, device):
    return m._cached_fp32_param("_weight_fp32_cache", m.weight, torch.device(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param_dtype", ["same", torch.float32])
def test_forward_matches_reference(device, dtype, param_dtype):
    pdtype = dtype if param_dtype == "same" else param_dtype
    m = make_norm(device, pdtype)
    x = make_input(device, dtype)
    assert_matches_reference(m, x)
    # a second call (warm cache or fast path) gives the same bits again
    assert_matches_reference(m, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_second_call_returns_the_same_cached_tensor(device, dtype):
    m = make_norm(device, dtype)
    with torch.no_grad():
        first = cached_weight(m, device)
        second = cached_weight(m, device)
    assert first is second
    assert first.dtype == torch.float32
    assert torch.equal(first, m.weight.float())
    assert "_weight_fp32_cache" in vars(m)


@pytest.mark.parametrize("device", DEVICES)
def test_cache_is_not_state_parameters_or_buffers(device):
    m = make_norm(device, torch.bfloat16)
    x = make_input(device, torch.bfloat16)
    with torch.no_grad():
        cached_weight(m, device)
        m(x)
    assert set(m.state_dict()) == {"weight", "bias"}
    assert len(list(m.parameters())) == 2
    assert list(m.buffers()) == []
    with torch.no_grad():
        cached = cached_weight(m, device)
    assert all(cached is not p for p in m.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_grad_mode_backward_works_and_cache_stays_empty(device, dtype):
    m = make_norm(device, dtype)
    x = make_input(device, dtype).requires_grad_(True)
    y = assert_matches_reference(m, x, grad=True)
    y.float().square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert m.weight.grad is not None and m.bias.grad is not None
    assert cache_entries(m) == []
    # the gradients are the plain autograd ones of the reference expression
    x2 = x.detach().clone().requires_grad_(True)
    w2 = m.weight.detach().clone().requires_grad_(True)
    b2 = m.bias.detach().clone().requires_grad_(True)
    ref = F.layer_norm(x2.float(), (HIDDEN,), w2.float(), b2.float(), m.eps)
    ref.to(dtype).float().square().sum().backward()
    assert torch.equal(x.grad, x2.grad)
    assert torch.equal(m.weight.grad, w2.grad)


def _mutations(device):
    def add_(m):
        m.weight.add_(0.25)

    def mul_(m):
        m.bias.mul_(-2.0)

    def copy_(m):
        m.weight.copy_(torch.randn_like(m.weight))

    def load_state_dict(m):
        sd = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
        m.load_state_dict(sd)

    def data_reassign(m):
        m.weight.data = torch.randn_like(m.weight)

    def param_reassign(m):
        m.bias = torch.nn.Parameter(torch.randn_like(m.bias))

    def to_dtype(m):
        m.to(torch.float16)

    return [add_, mul_, copy_, load_state_dict, data_reassign, param_reassign, to_dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mutate", _mutations("cpu"), ids=lambda f: f.__name__)
def test_cache_invalidated_by(device, mutate):
    m = make_norm(device, torch.bfloat16)
    x = make_input(device, torch.bfloat16)
    with torch.no_grad():
        cached_weight(m, device)
    assert_matches_reference(m, x)
    with torch.no_grad():
        mutate(m)
    assert_matches_reference(m, x)
    with torch.no_grad():
        assert torch.equal(cached_weight(m, device), m.weight.float())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cache_follows_module_to_device_and_back(dtype):
    m = make_norm("cpu", dtype)
    assert_matches_reference(m, make_input("cpu", torch.bfloat16))
    m.to("cuda")
    assert_matches_reference(m, make_input("cuda", torch.bfloat16))
    with torch.no_grad():
        m.weight.mul_(1.5)
    assert_matches_reference(m, make_input("cuda", torch.bfloat16))
    m.to("cpu")
    assert_matches_reference(m, make_input("cpu", torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_input_on_another_device_than_params():
    m = make_norm("cpu", torch.bfloat16)
    x = make_input("cuda", torch.bfloat16)
    y = assert_matches_reference(m, x)
    assert y.device == x.device
    with torch.no_grad():
        m.weight.add_(1.0)
    assert_matches_reference(m, x)
    # the cached copy for the cuda input lives on cuda, the parameter stays put
    with torch.no_grad():
        assert cached_weight(m, "cuda").device.type == "cuda"
    assert m.weight.device.type == "cpu"


def _reallocate_at_same_address(device, dtype, rounds):
    """Yield ``(new_tensor, old_storage_released)`` at one address, ``rounds`` times.

    On CUDA the caching allocator hands a freed block of the same size straight
    back. On CPU, where malloc gives no such promise, each tensor is a fresh
    storage over one fixed buffer (``torch.frombuffer``): a new storage at the
    same address with a fresh version counter, the case the key must not miss.
    """
    if device == "cpu":
        buffer = bytearray(HIDDEN * torch.empty(0, dtype=dtype).element_size())
        for i in range(rounds):
            t = torch.frombuffer(buffer, dtype=dtype)
            t.fill_(float(i % 7) - 3.0)
            yield t
        return
    for i in range(rounds):
        yield torch.full((HIDDEN,), float(i % 7) - 3.0, device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_storage_reuse_never_returns_stale(device, dtype):
    """Free the parameter's storage and refill it at the same address."""
    rounds, stale, reused = 60, 0, 0
    m = make_norm(device, dtype)
    x = make_input(device, dtype)
    with torch.no_grad():
        m.weight.data = torch.full((HIDDEN,), -5.0, device=device, dtype=dtype)
    fresh = _reallocate_at_same_address(device, dtype, rounds)
    for _ in range(rounds):
        with torch.no_grad():
            cached_weight(m, device)
            m(x)
            old_ptr = m.weight.data_ptr()
            # release the old storage before the replacement appears
            m.weight.data = torch.empty(0, device=device, dtype=dtype)
            m.weight.data = next(fresh)
            reused += m.weight.data_ptr() == old_ptr
            y = m(x)
            w = cached_weight(m, device)
        stale += not torch.equal(y, reference(m, x))
        stale += not torch.equal(w, m.weight.float())
    assert stale == 0
    # most rounds land on the previous round's address (what makes the test
    # bite); on CUDA another allocation of the same size class (a forward's
    # temporary, a one-off proof) may take the freed block in a few rounds, as
    # the plugin-applied harness child on an H200 saw (57 of 60)
    assert reused >= rounds // 2, f"only {reused} of {rounds} rounds reused"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_params_created_under_inference_mode(device, dtype):
    with torch.inference_mode():
        m = make_norm(device, dtype)
        x = make_input(device, torch.bfloat16)
        assert m.weight.is_inference()
    with torch.inference_mode():
        assert_matches_reference(m, x)
        # in-place writes to inference tensors bump no version counter
        m.weight.add_(1.0)
        assert_matches_reference(m, x)
        m.bias.mul_(3.0)
        assert_matches_reference(m, x)
    assert_matches_reference(m, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_affine(device, dtype):
    m = make_norm(device, dtype, elementwise_affine=False)
    assert m.weight is None and m.bias is None
    assert_matches_reference(m, make_input(device, dtype))
    with torch.no_grad():
        assert m._cached_fp32_param("_weight_fp32_cache", None, device) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_false(device, dtype):
    m = make_norm(device, dtype, bias=False)
    assert m.bias is None
    x = make_input(device, dtype)
    assert_matches_reference(m, x)
    with torch.no_grad():
        m.weight.sub_(0.5)
    assert_matches_reference(m, x)


class _Doubled(torch.nn.Module):
    def forward(self, w):
        return w * 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param_dtype", [torch.float32, "same"])
@pytest.mark.parametrize("how", ["parametrize", "plain tensor", "functional_call"])
def test_weights_held_outside_the_parameter_dict(device, dtype, param_dtype, how):
    """Weights that live elsewhere than ``_parameters`` are the ones used: a
    parametrization, a plain tensor attribute (FSDP1's unsharded views) and
    ``functional_call``'s temporary swap, with the module's own weights intact
    after the swap. (A parametrization computes a new tensor per read, often at
    the freed one's address: that is test_storage_reuse_never_returns_stale.)"""
    m = make_norm(device, dtype if param_dtype == "same" else param_dtype)
    x = make_input(device, dtype)
    own = assert_matches_reference(m, x)
    if how == "functional_call":
        w2, b2 = (torch.randn_like(p) for p in (m.weight, m.bias))
        with torch.no_grad():
            y = torch.func.functional_call(m, {"weight": w2, "bias": b2}, (x,))
        want = F.layer_norm(
            x.float(), m.normalized_shape, w2.float(), b2.float(), m.eps
        ).to(dtype)
        assert torch.equal(y, want)
        assert torch.equal(assert_matches_reference(m, x), own)
        return
    if how == "parametrize":
        torch.nn.utils.parametrize.register_parametrization(m, "weight", _Doubled())
        assert "weight" not in m._parameters
    else:
        w = m.weight.detach() * 3
        del m.weight
        m.weight = w
        assert "weight" not in m._parameters and m.weight is w
    y = assert_matches_reference(m, x)
    assert not torch.equal(y, own)
    if how == "plain tensor":
        with torch.no_grad():
            m.weight.add_(0.25)
        assert_matches_reference(m, x)


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_params_with_bf16_input_are_not_copied(device):
    m = make_norm(device, torch.float32)
    x = make_input(device, torch.bfloat16)
    assert_matches_reference(m, x)
    with torch.no_grad():
        w32 = cached_weight(m, device)
    assert w32.data_ptr() == m.weight.data_ptr()
    with torch.no_grad():
        m.weight.add_(0.125)
    assert_matches_reference(m, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fullgraph_compile_equals_eager(device, dtype):
    torch._dynamo.reset()
    m = make_norm(device, dtype)
    x = make_input(device, torch.bfloat16)
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        eager = m(x)
        y = compiled(x)
        assert torch.equal(y, eager)
        assert torch.equal(y, reference(m, x))
        m.weight.add_(0.5)
        assert torch.equal(compiled(x), reference(m, x))


@pytest.mark.parametrize("device", DEVICES)
def test_fullgraph_compile_with_grad_traces(device):
    torch._dynamo.reset()
    m = make_norm(device, torch.bfloat16)
    x = make_input(device, torch.bfloat16)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    assert torch.equal(y, reference(m, x))
    y.float().sum().backward()
    assert m.weight.grad is not None
    assert cache_entries(m) == []


@pytest.mark.parametrize("device", DEVICES)
def test_deepcopy_starts_cold_and_shares_nothing(device):
    m = make_norm(device, torch.bfloat16)
    x = make_input(device, torch.bfloat16)
    with torch.no_grad():
        original_cache = cached_weight(m, device)
    dup = copy.deepcopy(m)
    assert cache_entries(dup) == []
    with torch.no_grad():
        dup.weight.add_(2.0)
    assert_matches_reference(dup, x)
    assert_matches_reference(m, x)
    with torch.no_grad():
        dup_cache = cached_weight(dup, device)
    assert dup_cache.data_ptr() != original_cache.data_ptr()
    assert not torch.equal(dup_cache, original_cache)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickled_copy_starts_cold(device, how):
    m = make_norm(device, torch.bfloat16)
    x = make_input(device, torch.bfloat16)
    with torch.no_grad():
        cached_weight(m, device)
        m.weight.add_(1.0)  # the cache is now behind; a copy must not carry it
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(m))
    else:
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
    assert cache_entries(loaded) == []
    assert_matches_reference(loaded, x)
    assert torch.equal(reference(loaded, x), reference(m, x))


@pytest.mark.parametrize("device", DEVICES)
def test_mismatched_trailing_shape_is_a_value_error(device):
    m = make_norm(device, torch.bfloat16)
    x = make_input(device, torch.bfloat16, hidden=HIDDEN + 1)
    with pytest.raises(
        ValueError, match=rf"{HIDDEN + 1}.*{HIDDEN}|{HIDDEN}.*{HIDDEN + 1}"
    ):
        with torch.no_grad():
            m(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_non_floating_input_is_a_type_error(device, dtype):
    m = make_norm(device, torch.bfloat16)
    x = torch.ones(2, HIDDEN, device=device, dtype=dtype)
    with pytest.raises(TypeError, match="floating"):
        with torch.no_grad():
            m(x)
