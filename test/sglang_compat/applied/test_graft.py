# SPDX-License-Identifier: Apache-2.0
"""What the applied plugin changed on upstream's classes, and what it kept.

Runs only in the child process whose conftest ran
``load_plugins(); apply_plugin_hooks()``.
"""

import importlib
import inspect
import logging
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _harness import stale_rounds_after_same_address_swap

import sglang.multimodal_gen.runtime.layers.layernorm as upstream
from sgl_mmgen_fp32ln import _graft
from sgl_mmgen_fp32ln._loader import load_layernorm

ours = load_layernorm()
PLAN = _graft.installed_plan()
HAS_CUDA = torch.cuda.is_available()

REPLACED = {
    "FP32LayerNorm": (
        "_cached_fp32_param",
        "forward_native",
        "forward_cuda",
        "__setattr__",
        "_apply",
        "__getstate__",
    ),
    "LayerNormScaleShift": ("forward_cuda",),
    "ScaleResidualLayerNormScaleShift": ("forward_cuda",),
}
ADDED = {
    "FP32LayerNorm": (
        "_FP32_CACHE_ATTRS",
        "_affine_params",
        "_cache_key",
        "_canonical_device",
        "_check_input",
        "_drop_fp32_cache",
    )
}
TARGETS = [(cls, name) for cls, names in REPLACED.items() for name in names]
FUSED = ["LayerNormScaleShift", "ScaleResidualLayerNormScaleShift"]
# classes whose dictionaries the conftest snapshotted before the plugin loaded
KEPT = [
    "FP32LayerNorm",
    "_NormScaleShift",
    "_ScaleResidualNormScaleShift",
    "LayerNormScaleShift",
    "ScaleResidualLayerNormScaleShift",
    "RMSNormScaleShift",
    "ScaleResidualRMSNormScaleShift",
    "RMSNorm",
    "LayerNorm",
    "nn.Module",
]


def reference(m, x):
    def fp32(p):
        return None if p is None else p.detach().float()

    return F.layer_norm(
        x.float(), m.normalized_shape, fp32(m.weight), fp32(m.bias), m.eps
    ).to(x.dtype)


def our_function(cls_name, name):
    """The function of this project's class that the graft installs."""
    cls = PLAN.source if cls_name == "FP32LayerNorm" else getattr(ours, cls_name)
    return inspect.getattr_static(cls, name)


def test_plugin_logged_success_and_no_warning(applied):
    messages = [r.getMessage() for r in applied.records]
    assert [r for r in applied.records if r.levelno >= logging.WARNING] == []
    assert any(f"registered {len(TARGETS)} REPLACE hooks" in m for m in messages)


def test_plan_is_exactly_the_expected_graft():
    assert PLAN is not None
    assert sorted(PLAN.replaced) == sorted(
        f"{upstream.__name__}.{cls}.{name}" for cls, name in TARGETS
    )
    assert sorted(PLAN.added) == sorted(ADDED["FP32LayerNorm"])


@pytest.mark.parametrize("cls_name, name", TARGETS)
def test_replaced_attribute_runs_our_code(applied, cls_name, name):
    cls = getattr(upstream, cls_name)
    wrapper = vars(cls)[name]
    hook = inspect.getclosurevars(wrapper).nonlocals["hook"]
    assert hook is PLAN.replaced[f"{upstream.__name__}.{cls_name}.{name}"]
    assert hook.__code__ is our_function(cls_name, name).__code__
    # SGLang's REPLACE keeps the original reachable: what the class resolved
    # before, possibly inherited (the graft then overrides at this class)
    original = next(
        applied.by_class[base][name]
        for base in cls.__mro__
        if base in applied.by_class and name in applied.by_class[base]
    )
    assert wrapper.__wrapped__ is original


@pytest.mark.parametrize("name", ADDED["FP32LayerNorm"])
def test_added_helpers_are_ours(name):
    value = vars(upstream.FP32LayerNorm)[name]
    value = getattr(value, "__func__", value)  # staticmethods
    if callable(value):
        ours_fn = our_function("FP32LayerNorm", name)
        assert value.__code__ is getattr(ours_fn, "__func__", ours_fn).__code__
    else:
        assert value == our_function("FP32LayerNorm", name)


def test_super_calls_resolve_against_upstream_class():
    for name in ("__setattr__", "_apply"):
        fn = PLAN.replaced[f"{upstream.__name__}.FP32LayerNorm.{name}"]
        cell = fn.__closure__[fn.__code__.co_freevars.index("__class__")]
        assert cell.cell_contents is upstream.FP32LayerNorm


@pytest.mark.parametrize("cls_name", KEPT)
def test_everything_else_is_upstream_s(applied, cls_name):
    """``__init__``, forward_npu/xpu/hip/musa/cpu/native, the RMSNorm variants'
    forward_cuda and ``nn.Module`` itself are the very objects upstream had."""
    cls = nn.Module if cls_name == "nn.Module" else getattr(upstream, cls_name)
    touched = set(REPLACED.get(cls_name, ())) | set(ADDED.get(cls_name, ()))
    now = {k: v for k, v in vars(cls).items() if k not in touched}
    before = {k: v for k, v in applied.originals[cls_name].items() if k not in touched}
    assert now.keys() == before.keys()
    assert [k for k in now if now[k] is not before[k]] == []


def test_rms_variants_keep_upstream_cuda_kernels():
    for cls in (upstream.RMSNormScaleShift, upstream.ScaleResidualRMSNormScaleShift):
        assert "forward_cuda" not in vars(cls)
        base = cls.__mro__[1]
        assert not hasattr(vars(base)["forward_cuda"], "__wrapped__")


def test_private_copy_serves_upstream_class():
    # its fused paths check isinstance(module.norm, FP32LayerNorm)
    assert ours.FP32LayerNorm is upstream.FP32LayerNorm


def test_no_module_global_was_rebound_to_a_replacement():
    installed = {
        id(vars(getattr(upstream, cls))[name]): f"{cls}.{name}" for cls, name in TARGETS
    }
    installed.update({id(fn): target for target, fn in PLAN.replaced.items()})
    hits = [
        f"{mod.__name__}.{key} -> {installed[id(value)]}"
        for mod in list(sys.modules.values())
        if isinstance(mod, types.ModuleType)
        for key, value in list(getattr(mod, "__dict__", {}).items())
        if id(value) in installed
    ]
    assert hits == []


def _reuse_storage(m, value):
    # free the parameter's storage, then refill it (often at the same address)
    m.weight.data = torch.empty(0, dtype=m.weight.dtype)
    m.weight.data = torch.full_like(m.bias, value)


@pytest.mark.parametrize("cls_name", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_modules_norm_survives_same_address_swap(cls_name, dtype):
    cls = getattr(upstream, cls_name)

    def make_norm(hidden, dt):
        m = cls(hidden, eps=1e-6, elementwise_affine=True, dtype=dt)
        assert type(m.norm) is upstream.FP32LayerNorm
        return m.norm

    assert stale_rounds_after_same_address_swap(make_norm, dtype) == 0


@pytest.mark.parametrize("cls_name", FUSED)
def test_fused_modules_built_under_inference_mode(applied, cls_name):
    with torch.inference_mode():
        m = getattr(upstream, cls_name)(
            applied.hidden, elementwise_affine=True, dtype=torch.bfloat16
        )
        x = torch.randn(3, applied.hidden, dtype=torch.bfloat16)
        assert torch.equal(m.norm(x), reference(m.norm, x))
        m.norm.weight.add_(1.0)  # no version counter: the cache must not be used
        assert torch.equal(m.norm(x), reference(m.norm, x))


def test_forward_npu_gets_our_cache(applied, monkeypatch):
    """Upstream's NPU path stays, and the fp32 parameters it hands the NPU kernel
    come from our cache: correct after a storage swap at a reused address."""
    seen = []

    def layernorm(input, normalized_shape, weight, bias, eps, impl_mode):
        seen.append(SimpleNamespace(weight=weight, bias=bias))
        out = F.layer_norm(input.float(), normalized_shape, weight, bias, eps)
        return out, None, None

    monkeypatch.setattr(
        torch.ops, "attentions", SimpleNamespace(layernorm=layernorm), raising=False
    )
    m = upstream.FP32LayerNorm(applied.hidden, dtype=torch.bfloat16)
    x = torch.randn(4, applied.hidden, dtype=torch.bfloat16)
    with torch.no_grad():
        for i in range(20):
            m.forward_npu(x)
            _reuse_storage(m, float(i % 3) + 0.5)
            y = m.forward_npu(x)
            assert torch.equal(y, reference(m, x))
            assert seen[-1].weight.dtype == torch.float32
            assert torch.equal(seen[-1].weight, m.weight.float())
            assert seen[-1].weight is m._weight_fp32_cache[2]


def test_pre_existing_cpu_instance_drops_upstream_cache(applied):
    m = applied.pre["cpu_dispatch"]
    entry = vars(m).get("_weight_fp32_cache")
    assert entry is None or len(entry) == 3  # upstream's entries were (key, copy)
    x = torch.randn(3, applied.hidden, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(m(x), reference(m, x))
        _reuse_storage(m, 1.25)
        assert torch.equal(m(x), reference(m, x))


@pytest.mark.parametrize(
    "key, cls_name",
    [("cuda_dispatch", "FP32LayerNorm"), ("fused", "LayerNormScaleShift")],
)
def test_pre_existing_instances_rebind_their_forward(applied, key, cls_name):
    m = applied.pre[key]
    pending = vars(m)["_forward_method"]
    if isinstance(pending, _graft._Rebind):
        assert pending.owner is m and pending.name == "forward_cuda"
        resolved = getattr(m, pending.name)
    else:  # an earlier test called it already
        resolved = pending
    assert resolved.__func__ is vars(getattr(upstream, cls_name))["forward_cuda"]


def test_pre_existing_cuda_dispatched_norm_rebinds_on_first_call(applied):
    m = applied.pre["cuda_dispatch"]
    x = torch.randn(2, 3, applied.hidden, dtype=torch.bfloat16)
    with torch.no_grad():
        y = m(x)  # our forward_cuda on CPU tensors: the cached native path
    assert torch.equal(y, reference(m, x))
    bound = vars(m)["_forward_method"]
    assert isinstance(bound, types.MethodType)
    assert bound.__func__ is vars(upstream.FP32LayerNorm)["forward_cuda"]


def test_drop_fp32_cache_is_the_escape_hatch_for_untracked_writes(applied):
    m = upstream.FP32LayerNorm(applied.hidden, dtype=torch.bfloat16)
    x = torch.randn(3, applied.hidden, dtype=torch.bfloat16)
    with torch.no_grad():
        m(x)
        m.weight.data.add_(1.0)  # through .data: the version counter does not move
        m._drop_fp32_cache()
        assert torch.equal(m(x), reference(m, x))
    assert "_weight_fp32_cache" in vars(m)


def _select():
    # the kernels' dispatch, under the name the plugin's loader gave it
    return importlib.import_module(
        "sglang.kernels.ops.diffusion.norm.fp32_layernorm_select"
    )


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_fused_cuda_path_is_ours_and_bit_exact(monkeypatch, residual, param_dtype):
    """On CUDA the fused modules take this project's kernel where it is proven and
    match its eager reference chain bit for bit."""
    hidden, rows = 1024, 4096
    cls = (
        upstream.ScaleResidualLayerNormScaleShift
        if residual
        else upstream.LayerNormScaleShift
    )
    m = cls(hidden, elementwise_affine=True, dtype=param_dtype).cuda()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p, dtype=torch.float32) * 0.5 + 1.0)
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device="cuda").to(torch.bfloat16)

    x, scale, shift = rnd(2, rows, hidden), rnd(2, 1, hidden), rnd(2, 1, hidden)

    def not_native(*args, **kwargs):
        raise AssertionError("the fused CUDA kernel was not taken")

    monkeypatch.setattr(cls, "forward_native", not_native)
    with torch.no_grad():
        if residual:
            res, gate = rnd(2, rows, hidden), rnd(2, 1, hidden)
            out = m(res, x, gate, shift, scale)
            ref = _select()._fused_reference(
                x, m.norm.weight, m.norm.bias, m.norm.eps, res, gate, scale, shift
            )
            assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
        else:
            out = m(x, shift, scale)
            ref = _select()._fused_reference(
                x, m.norm.weight, m.norm.bias, m.norm.eps, None, None, scale, shift
            )
            assert torch.equal(out, ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_same_address_storage_swap_is_never_stale(dtype):
    # upstream's own class returns stale weights in 7 of these 8 rounds
    # (test_same_address.py); the graft must make that 0
    def make_norm(hidden, dt):
        return upstream.FP32LayerNorm(hidden, eps=1e-6, dtype=dt)

    assert stale_rounds_after_same_address_swap(make_norm, dtype) == 0
