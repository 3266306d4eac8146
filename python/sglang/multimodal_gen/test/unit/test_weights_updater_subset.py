# SPDX-License-Identifier: Apache-2.0
"""This tree's ``load_weights_into_model`` (the upstream-shaped subset of
``post_training/weights_updater.py``), with torch alone: every branch moves the
written parameter's version counter, so FP32LayerNorm's fp32 copies follow."""

import logging

import pytest
import torch
import torch.nn as nn

from sglang.multimodal_gen.runtime.layers import layernorm as ln
from sglang.multimodal_gen.runtime.post_training.weights_updater import (
    load_weights_into_model,
)

from _shared import one_cpu_thread  # noqa: F401 (autouse fixture)

DIM = 32


def _norm():
    torch.manual_seed(0)
    return ln.FP32LayerNorm(DIM, eps=1e-6, dtype=torch.bfloat16)


def _serve(norm):
    x = torch.randn(4, DIM, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return norm(x)


def _fresh(weight, bias):
    norm = _norm()
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    return _serve(norm)


def _new_weights():
    gen = torch.Generator().manual_seed(7)
    return {
        "weight": torch.randn(DIM, generator=gen) + 1.0,
        "bias": torch.randn(DIM, generator=gen),
    }


def test_plain_branch_under_inference_mode_bumps_and_serves_new_weights():
    norm = _norm()
    _serve(norm)
    assert "_weight_fp32_cache" in vars(norm)
    params = dict(norm.named_parameters())
    versions = {n: p._version for n, p in params.items()}
    new = _new_weights()
    with torch.inference_mode():  # as upstream's _load_weights_into_module
        load_weights_into_model(iter(new.items()), params)
    assert all(params[n]._version > v for n, v in versions.items())
    assert torch.equal(_serve(norm), _fresh(new["weight"], new["bias"]))


def test_weight_loader_branch_bumps_even_when_the_loader_writes_data():
    norm = _norm()
    _serve(norm)
    calls = []

    def loader(param, weight, shard_id=None):
        calls.append(shard_id)
        param.data.copy_(weight)  # invisible to the counter by itself

    norm.weight.weight_loader = loader
    new = _new_weights()
    params = dict(norm.named_parameters())
    with torch.inference_mode():
        load_weights_into_model(
            [("weight", new["weight"], None), ("bias", new["bias"])], params
        )
    assert calls == [None]
    assert torch.equal(_serve(norm), _fresh(new["weight"], new["bias"]))


def test_shard_id_reaches_the_loader():
    p = nn.Parameter(torch.zeros(2, 3))
    seen = []
    p.weight_loader = lambda param, w, shard_id: seen.append(
        (shard_id, w.dtype, tuple(w.shape))
    )
    before = p._version
    load_weights_into_model([("p", torch.ones(1, 3, dtype=torch.float64), 1)], {"p": p})
    assert seen == [(1, torch.float32, (1, 3))]
    assert p._version > before


def test_inference_tensor_params_are_written_without_a_counter():
    with torch.inference_mode():
        norm = _norm()
    assert norm.weight.is_inference()
    new = _new_weights()
    with torch.inference_mode():
        load_weights_into_model(iter(new.items()), dict(norm.named_parameters()))
        out = _serve(norm)
    assert torch.equal(out, _fresh(new["weight"], new["bias"]))


def test_shape_mismatch_is_a_value_error_naming_the_parameter():
    norm = _norm()
    with pytest.raises(ValueError, match=r"Shape mismatch for block\.weight"):
        load_weights_into_model(
            [("weight", torch.ones(DIM + 1))],
            dict(norm.named_parameters()),
            module_name="block",
        )


def test_unknown_names_are_skipped_with_a_warning(caplog):
    norm = _norm()
    before = norm.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        load_weights_into_model([("nope", torch.ones(DIM))], {"weight": norm.weight})
    assert "parameter 'nope' not found" in caplog.text
    assert torch.equal(norm.weight.detach(), before)
