# SPDX-License-Identifier: Apache-2.0
"""A parameter storage replaced at the same address, deterministically.

Upstream 0.5.23 keys its cache on ``data_ptr`` and the version counter, so every
round after the first returns the previous round's weights; this project's
cache keys on the storage itself and never does. A positive record of upstream's
behaviour next to the suite's ``test_storage_reuse_never_returns_stale`` (a
strict xfail there), and the helper the ``applied/`` tests reuse for the norms
inside the fused modules.
"""

import importlib

import pytest
import torch
from _harness import SUBTREE_IMPL, UPSTREAM_IMPL, stale_rounds_after_same_address_swap

ROUNDS = 8


def _norm_class(impl):
    if impl == SUBTREE_IMPL:
        from sgl_mmgen_fp32ln._loader import load_layernorm

        return load_layernorm().FP32LayerNorm
    return importlib.import_module(impl).FP32LayerNorm


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "impl, expected_stale",
    [(SUBTREE_IMPL, 0), (UPSTREAM_IMPL, ROUNDS - 1)],
    ids=["ours", "upstream"],
)
def test_same_address_storage_swap(impl, expected_stale, dtype):
    cls = _norm_class(impl)
    stale = stale_rounds_after_same_address_swap(
        lambda hidden, dt: cls(hidden, eps=1e-6, dtype=dt), dtype, ROUNDS
    )
    assert stale == expected_stale
