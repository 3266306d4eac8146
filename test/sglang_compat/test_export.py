# SPDX-License-Identifier: Apache-2.0
"""``export`` into the whole SGLang 0.5.23 package, then test the exported tree.

The installed ``sglang`` package of this venv is the wheel's package, so a git
tree ``python/sglang/...`` copied from it is an upstream checkout as far as the
export is concerned (offline; no download). The sync tool runs from this
repo's ``scripts/`` as a subprocess; the exported tree is imported and tested
only in child processes with ``PYTHONPATH=<tree>/python``, since this process
already holds the installed ``sglang``.
"""

import ast
import difflib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _harness import REPO

# The PR targets 0.5.23; 0.5.22's facade spells _SPECS as 5-tuples (with a
# description), which our 4-tuples do not fit, so only 0.5.23 is exported into.
EXPORT_TARGET = "0.5.23"
pytestmark = pytest.mark.skipif(
    importlib.metadata.version("sglang") != EXPORT_TARGET,
    reason=f"the export targets sglang {EXPORT_TARGET}",
)

SYNC = REPO / "scripts/sync_fastvideo_port.py"
LAYERNORM = "python/sglang/multimodal_gen/runtime/layers/layernorm.py"
NUMERICS = "python/sglang/kernels/numerics.py"
FACADE = "python/sglang/kernels/ops/diffusion/__init__.py"
README = "python/sglang/kernels/ops/diffusion/README.md"
UPDATER = "python/sglang/multimodal_gen/runtime/post_training/weights_updater.py"
UNIT = "python/sglang/multimodal_gen/test/unit"
MAX_OUTSIDE = 80
# upstream's own test, run unchanged against the export (beside ours in UNIT, so
# that it imports the same way; the name keeps it apart from our file)
UPSTREAM_TEST_COPY = f"{UNIT}/test_fp32_layernorm_upstream_original.py"


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=compat", "-c", "user.email=compat@example.com"]
        + ["-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def _installed_sglang() -> Path:
    (location,) = importlib.util.find_spec("sglang").submodule_search_locations
    return Path(location)


def _upstream_tree(root: Path) -> Path:
    shutil.copytree(
        _installed_sglang(),
        root / "python/sglang",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "sglang 0.5.23 (from the installed wheel)")
    return root


def _export(tree: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SYNC), "export", "--sglang", str(tree), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(tree, the export's report, the patch file, a clean copy of the tree)."""
    base = tmp_path_factory.mktemp("export")
    tree = _upstream_tree(base / "sglang")
    fresh = base / "fresh"
    _git(base, "clone", "-q", str(tree), str(fresh))
    patch = base / "export.patch"
    # the line limit is checked on its own (below): without it here, one
    # overrun fails one test instead of every test that needs the export
    manifest = base / "no-limit.toml"
    text = (REPO / "scripts/fastvideo_ports.toml").read_text()
    manifest.write_text(
        re.sub(
            r"(?m)^export_max_outside_lines = \d+", "export_max_outside_lines = 0", text
        )
    )
    done = _export(tree, "--patch", str(patch), "--manifest", str(manifest))
    assert done.returncode == 0, done.stderr or done.stdout
    (report,) = json.loads(done.stdout)["ports"]
    return tree, report, patch, fresh


def _changed(tree: Path) -> list[str]:
    lines = _git(tree, "status", "--porcelain", "--untracked-files=all").splitlines()
    return sorted(line[3:] for line in lines)


def test_export_touches_only_the_pr_files(exported):
    tree, report, _, _ = exported
    allowed_updater = (REPO / UPDATER).is_file()
    changed = _changed(tree)
    assert LAYERNORM in changed
    for rel in changed:
        name = rel.rsplit("/", 1)[-1]
        assert (
            rel == LAYERNORM
            or rel.startswith("python/sglang/kernels/")
            or (rel == UPDATER and allowed_updater)
            or (
                rel.startswith(UNIT + "/")
                and (name.startswith("test_") or name == "_shared.py")
            )
        ), rel
    assert f"{UNIT}/_shared.py" in changed
    assert f"{UNIT}/test_fp32_layernorm.py" in changed  # upstream's, replaced


def _masked(text: str) -> list[str]:
    """The lines of ``text`` with class FP32LayerNorm as one marker line."""
    (node,) = [
        n
        for n in ast.parse(text).body
        if isinstance(n, ast.ClassDef) and n.name == "FP32LayerNorm"
    ]
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines = text.splitlines()
    return lines[: first - 1] + ["<FP32LayerNorm>"] + lines[node.end_lineno :]


def test_layernorm_changes_outside_the_class_stay_small(exported):
    tree, report, _, fresh = exported
    # the real manifest's limit, as the tool enforces it
    real = _export(fresh, "--dry-run")
    assert real.returncode == 0, real.stderr or real.stdout
    old = _git(tree, "show", f"HEAD:{LAYERNORM}")
    new = (tree / LAYERNORM).read_text()
    diff = difflib.unified_diff(_masked(old), _masked(new), n=0, lineterm="")
    outside = [d for d in diff if d[:1] in ("+", "-") and d[:3] not in ("+++", "---")]
    assert len(outside) == report["outside_class_lines"]
    assert len(outside) <= MAX_OUTSIDE, "\n".join(outside)
    assert {"forward_npu", "forward_xpu"} <= set(report["kept"])
    routed = [s for s in report["steps"] if s["kind"] == "prelude"]
    assert routed and set(routed[0]["routed"]) == {
        "_NormScaleShift.forward_cuda",
        "_ScaleResidualNormScaleShift.forward_cuda",
    }


@pytest.mark.parametrize("rel", [NUMERICS, FACADE, README])
def test_extended_files_only_gain_lines(exported, rel):
    tree, _, _, _ = exported
    if not (REPO / rel).is_file():
        pytest.skip(f"this tree has no {rel}")
    numstat = _git(tree, "diff", "--numstat", "--", rel).split()
    assert numstat, f"{rel} unchanged"
    added, removed = int(numstat[0]), int(numstat[1])
    assert added > 0 and removed == 0, numstat


def test_patch_applies_to_a_clean_tree(exported):
    _, _, patch, fresh = exported
    _git(fresh, "apply", "--check", str(patch))


def _child(tree: Path, args: list[str], timeout: float = 600):
    env = {**os.environ, "PYTHONPATH": str(tree / "python")}
    for key in ("SGLANG_FP32LN_IMPL", "SGLANG_PLUGINS", "SGLANG_COMPAT_APPLIED"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _our_exports() -> list[str]:
    tree = ast.parse((REPO / FACADE).read_text())
    for stmt in tree.body:
        target = getattr(stmt, "target", None) or (getattr(stmt, "targets", [None])[0])
        if isinstance(target, ast.Name) and target.id == "_EXPORTS":
            return [k.value for k in stmt.value.keys]
    raise AssertionError("our facade has no _EXPORTS")


def test_exported_tree_imports(exported):
    tree, _, _, _ = exported
    code = f"""
import importlib, pathlib
import sglang
assert pathlib.Path(sglang.__file__).is_relative_to({str(tree)!r}), sglang.__file__
ln = importlib.import_module("sglang.multimodal_gen.runtime.layers.layernorm")
facade = importlib.import_module("sglang.kernels.ops.diffusion")
for name in {_our_exports()!r}:
    getattr(facade, name)
assert hasattr(ln.FP32LayerNorm, "forward_npu") and hasattr(ln.FP32LayerNorm, "forward_xpu")
print("ok")
"""
    done = _child(tree, ["-c", code])
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-4000:]


# What the export keeps of upstream on purpose (the fused modules' non-CUDA
# paths: only forward_cuda is routed) fails some of our cases, which test this
# tree's versions (test_layernorm_modules.py, which tests this tree's subsets of
# upstream's other modules, is not exported). Listed with the reason, strictly: an
# unlisted failure, or a listed case that passes, turns the harness red.
# Failures inside upstream's forward_cpu calling torch.ops.sgl_kernel CPU ops
# are environmental (this venv has no sgl-kernel CPU build) and are counted
# apart by their traceback, not listed.
_GATE = "upstream's fused modules (kept, not in the PR) reject this gate otherwise"
KEPT_UPSTREAM_FAILS: dict[str, str] = {
    "test_edge_fused_int_gate_other_than_one_is_a_value_error": _GATE
    + " (an assert, not ValueError)",
    "test_edge_fused_gate_of_another_type_is_a_type_error": _GATE
    + " (assert or ValueError, not TypeError)",
    "test_edge_fused_per_frame_frames_must_divide_the_sequence": (
        "upstream's message is 'sequence length must be divisible by num_frames'"
    ),
    "test_edge_fused_input_with_the_wrong_hidden_size_is_a_value_error": (
        "upstream does not validate the hidden size: RuntimeError from the "
        "modulation broadcast"
    ),
}
SGL_KERNEL_CPU = "sgl_kernel"


def _results(junit: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, failure text) from pytest's junit xml."""
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(junit).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                text = (child.get("message") or "") + "\n" + (child.text or "")
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        out[test_id] = (outcome, text)
    return out


def test_suites_pass_on_the_exported_tree(exported, tmp_path):
    """Our exported suite and upstream's ORIGINAL test file, on the export."""
    tree, report, _, _ = exported
    shutil.copyfile(
        _installed_sglang() / "multimodal_gen/test/unit/test_fp32_layernorm.py",
        tree / UPSTREAM_TEST_COPY,
    )
    ours = sorted(
        rel
        for rel in _changed(tree)
        if rel.startswith(UNIT + "/test_") and rel != UPSTREAM_TEST_COPY
    )
    junit = tmp_path / "junit.xml"
    args = ["-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider"]
    args += ["-W", "ignore::pytest.PytestUnknownMarkWarning", f"--junitxml={junit}"]
    args += [f"--rootdir={tree}", *ours, UPSTREAM_TEST_COPY]
    done = _child(tree, args)
    tail = (done.stdout + done.stderr)[-3000:]
    assert junit.is_file(), tail
    results = _results(junit)
    upstream_cases = {k: v for k, v in results.items() if "upstream_original" in k}
    assert len(upstream_cases) == 2, upstream_cases  # collected, and CUDA-only
    failed = {k: text for k, (outcome, text) in results.items() if outcome == "failed"}
    environmental = sorted(k for k, text in failed.items() if SGL_KERNEL_CPU in text)
    by_test: dict[str, list[str]] = {}
    for k in failed:
        if k not in environmental:
            by_test.setdefault(k.split("::")[-1].split("[")[0], []).append(k)
    unexpected = {t: ids for t, ids in by_test.items() if t not in KEPT_UPSTREAM_FAILS}
    fixed = sorted(set(KEPT_UPSTREAM_FAILS) - set(by_test))
    passed = sum(outcome == "passed" for outcome, _ in results.values())
    summary = (
        f"{passed} passed, {len(failed)} failed ({len(environmental)} on upstream's "
        f"sgl_kernel CPU path), {len(results)} in all"
    )
    print(summary)
    assert not unexpected, (
        summary,
        {t: failed[ids[0]][-1500:] for t, ids in unexpected.items()},
    )
    assert not fixed, f"listed in KEPT_UPSTREAM_FAILS but passing now: {fixed}"
    assert passed > 0, tail
