# SPDX-License-Identifier: Apache-2.0
"""SGLang's real weight updater after the plugin applied its AROUND hook:
serving after an update (in place, from disk, rolled back) equals a fresh model
loaded with the new weights, on upstream's FP32LayerNorm with the graft."""

import importlib

import _updater_case as case
import pytest
from _harness import UPDATER_SKIP_REASON, updater_deps_missing

if updater_deps_missing():
    pytest.skip(UPDATER_SKIP_REASON, allow_module_level=True)

import sglang.multimodal_gen.runtime.layers.layernorm as upstream
from sgl_mmgen_fp32ln import _graft, _updater

updater = importlib.import_module(case.UPDATER)


def test_writer_is_hooked_around_upstreams_function():
    fn = updater.load_weights_into_model
    assert _graft.installed_plan().wrapped == {
        _updater.TARGET: _updater.bump_written_versions
    }
    assert fn.__wrapped__.__module__ == case.UPDATER  # upstream's body inside


def test_in_place_update_is_fresh():
    served, fresh = case.update_in_place(upstream, updater)
    assert case.same(served, fresh)


def test_update_from_disk_and_rollback_are_fresh():
    out = case.update_from_disk(upstream, updater)
    for step, (served, fresh) in out.items():
        assert case.same(served, fresh), step


def test_dtensor_branch_bumps_the_version():
    before, after, written = case.dtensor_versions(upstream, updater)
    assert written and after > before
