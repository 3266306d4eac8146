# SPDX-License-Identifier: Apache-2.0
"""Apply the plugin through SGLang's own lifecycle, once, for this process.

Collected only in the child process that ``test_plugin.py`` starts with
``SGLANG_COMPAT_APPLIED=1``. Before the plugin loads, it builds modules the way
a process that imported SGLang's runtime early would have them, so the tests can
check that instances built before the hooks get the graft too. It snapshots the
class dictionaries that the graft must leave alone, and keeps the plugin's log
records.
"""

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import sglang.multimodal_gen.runtime.layers.layernorm as upstream
from sglang.multimodal_gen.runtime.platforms.plugins import (
    apply_plugin_hooks,
    load_plugins,
)

HIDDEN = 64

_KEPT_CLASSES = (
    "FP32LayerNorm",
    "_NormScaleShift",
    "_ScaleResidualNormScaleShift",
    "LayerNormScaleShift",
    "ScaleResidualLayerNormScaleShift",
    "RMSNormScaleShift",
    "ScaleResidualRMSNormScaleShift",
    "RMSNorm",
    "LayerNorm",
)


def _build_pre_existing():
    torch.manual_seed(0)
    cpu = upstream.FP32LayerNorm(HIDDEN, dtype=torch.bfloat16)
    with torch.no_grad():
        cpu(torch.randn(3, HIDDEN, dtype=torch.bfloat16))  # an upstream cache entry
    assert "_weight_fp32_cache" in vars(cpu)
    # what CustomOp binds on a CUDA platform, here on CPU tensors
    cuda = upstream.FP32LayerNorm(HIDDEN, dtype=torch.bfloat16)
    cuda._forward_method = cuda.forward_cuda
    fused = upstream.LayerNormScaleShift(HIDDEN, elementwise_affine=True)
    fused._forward_method = fused.forward_cuda
    return {"cpu_dispatch": cpu, "cuda_dispatch": cuda, "fused": fused}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _apply():
    pre = _build_pre_existing()
    originals = {name: dict(vars(getattr(upstream, name))) for name in _KEPT_CLASSES}
    originals["nn.Module"] = dict(vars(nn.Module))
    classes = [getattr(upstream, name) for name in _KEPT_CLASSES] + [nn.Module]
    by_class = {cls: dict(vars(cls)) for cls in classes}
    handler = _Records()
    plugin_logger = logging.getLogger("sgl_mmgen_fp32ln")
    plugin_logger.addHandler(handler)
    plugin_logger.setLevel(logging.DEBUG)
    try:
        load_plugins()
        apply_plugin_hooks()
    finally:
        plugin_logger.removeHandler(handler)
    return SimpleNamespace(
        pre=pre,
        originals=originals,
        by_class=by_class,
        records=handler.records,
        hidden=HIDDEN,
    )


APPLIED = _apply()


@pytest.fixture
def applied():
    return APPLIED
