# SPDX-License-Identifier: Apache-2.0
"""SGLang's real weight updater (``post_training/weights_updater.py``) after
serving, without the plugin: upstream alone (stale, strict xfail) and with this
tree's fix spliced in (``python/.../post_training/weights_updater.py``, loaded by
path; its ``load_weights_into_model`` replaces upstream's in the module, as the
export would). The plugin's hook is checked in ``applied/``.
"""

import importlib
import importlib.util
import sys

import _updater_case as case
import pytest
from _harness import REPO, UPDATER_SKIP_REASON, updater_deps_missing

if updater_deps_missing():
    pytest.skip(UPDATER_SKIP_REASON, allow_module_level=True)

from sgl_mmgen_fp32ln import _updater
from sgl_mmgen_fp32ln._loader import load_layernorm

TREE_UPDATER = (
    REPO / "python/sglang/multimodal_gen/runtime/post_training/weights_updater.py"
)
STALE = (
    "upstream's load_weights_into_model writes param.data.copy_ (and a DTensor's "
    "_local_tensor.copy_), which leaves param._version alone: upstream's "
    "FP32LayerNorm keeps serving the fp32 copy of the old weights"
)

updater = importlib.import_module(case.UPDATER)
upstream_ln = importlib.import_module("sglang.multimodal_gen.runtime.layers.layernorm")


def _tree_updater():
    name = "_compat_tree_weights_updater"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TREE_UPDATER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def fixed_updater(monkeypatch):
    """Upstream's module with the tree's functions spliced in."""
    tree = _tree_updater()
    for name, fn in vars(tree).items():
        if callable(fn) and getattr(fn, "__module__", None) == tree.__name__:
            assert hasattr(updater, name), f"{name} is not an upstream name"
            monkeypatch.setattr(updater, name, fn)
    return updater


@pytest.mark.xfail(strict=True, reason=STALE)
def test_upstream_alone_serves_stale_weights_after_update():
    served, fresh = case.update_in_place(upstream_ln, updater)
    assert case.same(served, fresh)


@pytest.mark.xfail(strict=True, reason=STALE)
def test_upstream_alone_update_weights_from_disk_is_stale():
    out = case.update_from_disk(upstream_ln, updater)
    assert case.same(*out["after_update"])


@pytest.mark.parametrize("impl", ["upstream", "subtree"])
def test_tree_fix_in_place_update_is_fresh(fixed_updater, impl):
    ln = upstream_ln if impl == "upstream" else load_layernorm()
    served, fresh = case.update_in_place(ln, fixed_updater)
    assert case.same(served, fresh)


@pytest.mark.parametrize("impl", ["upstream", "subtree"])
def test_tree_fix_update_from_disk_and_rollback_are_fresh(fixed_updater, impl):
    ln = upstream_ln if impl == "upstream" else load_layernorm()
    out = case.update_from_disk(ln, fixed_updater)
    for step, (served, fresh) in out.items():
        assert case.same(served, fresh), step


def test_dtensor_branch_upstream_leaves_the_version():
    before, after, written = case.dtensor_versions(load_layernorm(), updater)
    assert written and after == before


def test_dtensor_branch_tree_fix_bumps_the_version(fixed_updater):
    before, after, written = case.dtensor_versions(load_layernorm(), fixed_updater)
    assert written and after > before


def test_tree_subset_matches_upstream_signatures_and_structure():
    import inspect

    tree = _tree_updater()
    problems, fixed = _updater.source_problems(inspect.getsource(updater))
    assert problems == [] and fixed is False
    assert _updater.source_problems(TREE_UPDATER.read_text())[1] is True
    fn = tree.load_weights_into_model
    assert inspect.signature(fn) == inspect.signature(updater.load_weights_into_model)
