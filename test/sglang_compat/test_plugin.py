# SPDX-License-Identifier: Apache-2.0
"""The installed plugin, driven through SGLang's own plugin lifecycle.

Applying hooks is process-global and one-way, so every case that applies (or
tries to apply) the plugin runs in a child interpreter of this venv: the probe
script for the allow-list and structure cases, and a child pytest over
``applied/`` for everything checked on the patched classes.
"""

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from _harness import (
    APPLIED_ENV,
    DIST,
    ENTRY_POINT,
    HARNESS,
    SUBTREE_IMPL,
    TREE_LAYERNORM,
    UPDATER_SKIP_REASON,
    UPSTREAM_IMPL,
    run_python,
    updater_deps_missing,
)

PROBE = HARNESS / "_probe_lifecycle.py"
N_REPLACED = 8  # 6 on FP32LayerNorm, forward_cuda of the 2 LayerNorm fused modules
N_TARGETS = N_REPLACED + 1  # and the AROUND hook on the weight updater


def _probe(*cases, env=None):
    proc = subprocess.run(
        [sys.executable, str(PROBE), *cases],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=HARNESS,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line]
    return {r["case"]: r for r in results}


def _env(**overrides):
    env = dict(os.environ)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def test_entry_point_is_registered_and_wheel_ships_no_sglang():
    eps = importlib.metadata.entry_points(group="sglang.multimodal_gen.plugins")
    ours = [ep for ep in eps if ep.name == ENTRY_POINT]
    assert [ep.value for ep in ours] == ["sgl_mmgen_fp32ln:register"]
    assert ours[0].dist.name == DIST
    files = importlib.metadata.files(DIST)
    top_level = {f.parts[0] for f in files}
    assert "sglang" not in top_level
    assert "sgl_mmgen_fp32ln" in top_level


def test_installed_subtree_copy_is_the_tree_file():
    spec = importlib.util.find_spec(SUBTREE_IMPL)
    with open(spec.origin, "rb") as installed, open(TREE_LAYERNORM, "rb") as tree:
        assert installed.read() == tree.read(), (
            "the installed plugin is older than python/.../layernorm.py: "
            "rerun scripts/run_sglang_compat.sh (it reinstalls the plugin)"
        )


def test_importing_the_package_imports_neither_torch_nor_sglang():
    proc = run_python(
        "import sys, sgl_mmgen_fp32ln\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sglang'}))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("upstream_first", [True, False])
def test_loader_leaves_the_op_registry_as_it_was(upstream_first):
    proc = run_python(
        f"""
import json
from sglang.multimodal_gen.runtime.layers.custom_op import CustomOp
if {upstream_first}:
    import {UPSTREAM_IMPL}
registry = CustomOp.op_registry
before = dict(registry)
from sgl_mmgen_fp32ln._loader import load_layernorm
ours = load_layernorm()
assert load_layernorm() is ours
same = CustomOp.op_registry is registry and CustomOp.op_registry == before
import {UPSTREAM_IMPL} as upstream  # asserts on a duplicate op name
print(json.dumps({{
    "same": same,
    "module": ours.__name__,
    "registered": CustomOp.op_registry["fp32_layer_norm"] is upstream.FP32LayerNorm,
    "distinct": ours.FP32LayerNorm is not upstream.FP32LayerNorm,
}}))
"""
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "same": True,
        "module": SUBTREE_IMPL,
        "registered": True,
        "distinct": True,
    }


@pytest.mark.parametrize(
    "allow_list, applied",
    [
        (None, True),
        (f"some_other_plugin, {ENTRY_POINT}", True),
        ("some_other_plugin", False),
        (ENTRY_POINT.upper(), False),
    ],
    ids=["unset", "listed", "other", "wrong-case"],
)
def test_sglang_plugins_allow_list(allow_list, applied):
    result = _probe(env=_env(SGLANG_PLUGINS=allow_list))["plain"]
    assert result["warnings"] == []
    assert result["patched"] is applied
    if applied:
        assert len(result["hook_targets"]) == N_TARGETS
        assert result["changed"] == [
            "FP32LayerNorm",
            "LayerNormScaleShift",
            "ScaleResidualLayerNormScaleShift",
        ]
    else:
        assert result["hook_targets"] == []
        assert result["changed"] == []


MISMATCH_MESSAGES = {
    "module_not_importable": "cannot import sglang.multimodal_gen.runtime",
    "class_missing": "FP32LayerNorm is missing",
    "not_an_nn_layernorm": "FP32LayerNorm is not an nn.LayerNorm",
    "no_cached_fp32_param": "FP32LayerNorm does not define _cached_fp32_param",
    "forward_native_signature": (
        "FP32LayerNorm.forward_native: upstream's parameters (self, inputs, "
        "residual) differ from ours (self, inputs)"
    ),
    "port_already_upstream": "_FP32_CACHE_ATTRS: upstream already has this",
    "fused_class_missing": "ScaleResidualLayerNormScaleShift is missing",
    "fused_norm_type": "LayerNormScaleShift.norm_type is not 'layer'",
    "version_out_of_range": "is outside the supported range >=0.4.0,<0.5.0",
}


@pytest.fixture(scope="module")
def mismatch_results():
    # one child for all cases: a refused graft changes nothing, so SGLang's
    # lifecycle can be reset between them; the probe ends with a positive control
    return _probe(*MISMATCH_MESSAGES, env=_env(SGLANG_PLUGINS=None))


@pytest.mark.parametrize("case", sorted(MISMATCH_MESSAGES))
def test_mismatched_structure_warns_once_and_changes_nothing(mismatch_results, case):
    result = mismatch_results[case]
    assert len(result["warnings"]) == 1
    assert "not applied" in result["warnings"][0]
    assert MISMATCH_MESSAGES[case] in result["warnings"][0]
    assert result["changed"] == []
    assert result["hook_targets"] == []
    assert result["patched"] is False


def test_mismatch_probe_control_applies(mismatch_results):
    control = mismatch_results["control"]
    assert control["warnings"] == []
    assert control["patched"] is True
    assert len(control["hook_targets"]) == N_TARGETS


def test_applied_process_suite():
    """``applied/``: the FP32LayerNorm suite on upstream's patched class, plus the
    graft checks, in a child that ran ``load_plugins(); apply_plugin_hooks()``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "applied"],
        capture_output=True,
        text=True,
        env=_env(**{APPLIED_ENV: "1", "SGLANG_PLUGINS": None}),
        timeout=480,
        cwd=HARNESS,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b\d+ passed\b", summary), summary
    assert not re.search(r"failed|error|xfail|xpass", summary), summary
    print(proc.stdout[-4000:])


UPDATER_CASES = {
    # the updater cannot be located: the norm graft applies, one warning
    "updater_not_found": "weight updater not hooked",
    # already imported with another signature: the norm graft applies, one warning
    "updater_signature": "load_weights_into_model's parameters (weights_iter)",
}


@pytest.mark.parametrize("case", sorted(UPDATER_CASES))
def test_updater_mismatch_warns_once_and_hooks_only_the_norms(case):
    if case == "updater_signature" and updater_deps_missing():
        pytest.skip(UPDATER_SKIP_REASON)  # the probe imports the real updater
    result = _probe(case, env=_env(SGLANG_PLUGINS=None))[case]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert UPDATER_CASES[case] in result["warnings"][0]
    assert result["patched"] is True
    assert len(result["hook_targets"]) == N_REPLACED
    assert not any("weights_updater" in t for t in result["hook_targets"])


def test_updater_import_failing_at_apply_time_leaves_it_and_the_norms_apply():
    """Registration imports nothing; if SGLang's apply step cannot import the
    updater (here: cache_dit is unimportable), SGLang logs it and goes on."""
    result = _probe("updater_import_fails", env=_env(SGLANG_PLUGINS=None))[
        "updater_import_fails"
    ]
    assert result["warnings"] == []
    assert result["patched"] is True
    assert len(result["hook_targets"]) == N_TARGETS
    assert result["updater_patched"] is False


def test_source_check_rejects_bent_upstream_sources():
    from sgl_mmgen_fp32ln import _updater

    spec = importlib.util.find_spec(_updater.UPDATER_MODULE)
    with open(spec.origin, encoding="utf-8") as f:
        src = f.read()
    assert _updater.source_problems(src) == ([], False)
    renamed = src.replace(
        "def load_weights_into_model(\n    weights_iter,",
        "def load_weights_into_model(\n    entries,",
    )
    assert renamed != src
    assert "parameters (entries, model_params, module_name)" in (
        _updater.source_problems(renamed)[0][0]
    )
    no_call = src.replace(
        "            load_weights_into_model(", "            other_writer("
    )
    assert no_call.count("other_writer(") == 2
    assert "_load_weights_into_module does not call" in " ".join(
        _updater.source_problems(no_call)[0]
    )
    assert _updater.source_problems(
        src.replace(
            "param.data.copy_(loaded_weight.to(param.dtype))",
            "param.data.copy_(loaded_weight.to(param.dtype))\n"
            "                increment_version(param)",
        )
    ) == ([], True)


@pytest.mark.parametrize(
    "version, ok",
    [
        ("0.5.22", True),
        ("0.5.23", True),
        ("0.5.23.post1", True),
        ("0.5.20", False),
        ("0.5.24", False),
        ("0.5.24.dev0", False),
        ("0.5.22rc1", False),
        (None, False),
        ("garbage", False),
    ],
)
def test_supported_range(version, ok):
    from sgl_mmgen_fp32ln import _graft

    assert (_graft.version_problem(version) is None) is ok
