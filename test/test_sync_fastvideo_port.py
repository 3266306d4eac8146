# SPDX-License-Identifier: Apache-2.0
"""Offline tests of scripts/sync_fastvideo_port.py and its fastvideo_sync package.

Every origin, "our repo" and SGLang checkout is a throwaway git repo under
tmp_path holding small synthetic files; nothing touches the network (URL mode is
exercised with file:// URLs) or the real manifest, except the one test marked
REAL MANIFEST below.
"""

import difflib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info < (3, 11):
    pytest.skip("the sync tool needs Python 3.11+ (tomllib)", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "sync_fastvideo_port.py"
sys.path.insert(0, str(SCRIPT.parent))  # the fastvideo_sync package
from fastvideo_sync import cli, common, inplace, manifest  # noqa: E402
from fastvideo_sync import origin as origin_git  # noqa: E402
from fastvideo_sync import routing, splice, symbols  # noqa: E402

ORIGIN_PATH = "fastvideo/layers/layernorm.py"
TARGET_PATH = "python/sglang/multimodal_gen/runtime/layers/layernorm.py"
TEST_PATH = "python/sglang/multimodal_gen/test/unit/test_fp32_layernorm.py"
PR_REF = "refs/pull/1245/head"

ORIGIN_BASE = """import torch


class FP32LayerNorm:
    def forward(self, x):
        return x.float()
"""
ORIGIN_PORTED = '''import torch


class FP32LayerNorm:
    def _fp32_cached(self, attr, t):
        """Cached fp32 copy."""
        if t is None:
            return t
        return t.float()

    def forward(self, x):
        return x.float()
'''
# the same class, reformatted: comments, quotes, wrapping, docstring
ORIGIN_COSMETIC = ORIGIN_PORTED.replace(
    '        """Cached fp32 copy."""\n', "        '''Reworded docstring.'''\n"
).replace("        if t is None:\n", "        # a comment\n        if (t is None):\n")
ORIGIN_DRIFTED = ORIGIN_PORTED.replace(
    "        return t.float()\n",
    "        if torch.is_grad_enabled():\n"
    "            return t.float()\n"
    "        return t.float()\n",
)
ORIGIN_REMOVED = "import torch\n"

OURS = '''# SPDX-License-Identifier: Apache-2.0
"""Our ported module (synthetic)."""

import functools
from collections import OrderedDict

_SCALE = 2


def _double(x):
    return 2 * x


def _helper(x):
    return _double(x) + _SCALE


class Unrelated:
    pass


class FP32LayerNorm:
    """Ours."""

    _CACHE = OrderedDict()

    def __init__(self, n):
        self.n = n

    def forward_native(self, x):
        return ("ours", _helper(x), functools.reduce(int.__add__, [x, self.n]))
'''
OUR_TEST = "from sglang.multimodal_gen.runtime.layers.layernorm import FP32LayerNorm\n"

UPSTREAM = '''"""Fake upstream layernorm."""

import os
from collections import OrderedDict


class Before:
    def forward_npu(self):
        return "before-npu"


# upstream comment above the class
class FP32LayerNorm:
    """Upstream docstring."""

    def __init__(self, n):
        self.n = n

    def forward_native(self, x):
        return ("upstream", x)

    # NPU path, upstream only
    def forward_npu(self, x):
        return ("npu", self.forward_native(x))

    def forward_xpu(self, x):
        return ("xpu", os.sep, x)


class After:
    def forward_xpu(self):
        return "after-xpu"
'''

MANIFEST = """# test manifest: comments and layout must survive edits
schema_version = 1

[[port]]
name = "fp32"
origin_repo = "{origin}"
pr = 1245  # the PR
origin_commit   = "{commit}"   # recorded
origin_path = "fastvideo/layers/layernorm.py"
origin_symbol = "FP32LayerNorm"
origin_fingerprint = "{ofp}"
target_path = "{target}"
target_symbol = "FP32LayerNorm"
target_fingerprint = "{tfp}"
target_test_path = "{test}"
upstream_path = "{upstream}"
upstream_test_path = "{test}"

[[port.not_ported]]
path = "fastvideo/layers/rotary_embedding.py"
reason = "SGLang has its own fused QK-norm + RoPE path"
"""


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch):
    """No user/system git config (signing, hooks) and a fixed identity."""
    for var in origin_git._GIT_REPO_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")


def git(cwd, *args) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def commit_file(repo: Path, rel: str, text: str, message: str) -> str:
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def fingerprint_of(text: str) -> str:
    return symbols.locate(text, "FP32LayerNorm", "t").fingerprint


class Origin:
    """main: pre-PR base; PR branch: the ported commit, PR ref on top of it."""

    def __init__(self, root: Path):
        self.path = root
        root.mkdir()
        git(root, "init", "-q", "-b", "main")
        self.base = commit_file(root, ORIGIN_PATH, ORIGIN_BASE, "base")
        git(root, "checkout", "-q", "-b", "pr")
        self.recorded = commit_file(root, ORIGIN_PATH, ORIGIN_PORTED, "Cache FP32")
        git(root, "update-ref", PR_REF, self.recorded)
        git(root, "checkout", "-q", "main")

    def push_pr(self, text: str, message: str = "PR update") -> str:
        git(self.path, "checkout", "-q", "pr")
        sha = commit_file(self.path, ORIGIN_PATH, text, message)
        git(self.path, "update-ref", PR_REF, sha)
        git(self.path, "checkout", "-q", "main")
        return sha


class Ours:
    """A temp "our repo": target module, its test and a manifest."""

    def __init__(self, root: Path, origin: Origin, **overrides):
        self.root = root
        (root / "scripts").mkdir(parents=True)
        for rel, text in ((TARGET_PATH, OURS), (TEST_PATH, OUR_TEST)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        values = {
            "origin": str(origin.path),
            "commit": origin.recorded,
            "ofp": fingerprint_of(ORIGIN_PORTED),
            "tfp": fingerprint_of(OURS),
            "target": TARGET_PATH,
            "test": TEST_PATH,
            "upstream": TARGET_PATH,
        }
        values.update(overrides)
        self.manifest = root / "scripts" / "fastvideo_ports.toml"
        self.manifest.write_text(MANIFEST.format(**values))

    def run(self, capsys, *argv) -> tuple[int, dict, str]:
        """Run the tool in-process with --json; returns (exit, report, stderr)."""
        args = [*argv, "--json", "--manifest", str(self.manifest)]
        code = cli.main([*args, "--repo-root", str(self.root)])
        out, err = capsys.readouterr()
        return code, json.loads(out), err


@pytest.fixture
def origin(tmp_path) -> Origin:
    return Origin(tmp_path / "origin")


@pytest.fixture
def ours(tmp_path, origin) -> Ours:
    return Ours(tmp_path / "ours", origin)


def make_checkout(root: Path, text: str = UPSTREAM) -> Path:
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit_file(root, TARGET_PATH, text, "upstream")
    return root


def changed_lines(old: str, new: str) -> list[str]:
    diff = difflib.unified_diff(old.splitlines(), new.splitlines(), n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in "+++---"]


################################################################################
# fingerprints
################################################################################
def test_fingerprint_ignores_formatting_comments_and_docstrings():
    assert fingerprint_of(ORIGIN_COSMETIC) == fingerprint_of(ORIGIN_PORTED)
    black_like = ORIGIN_PORTED.replace(
        "    def _fp32_cached(self, attr, t):\n",
        "    def _fp32_cached(\n        self,\n        attr,\n        t,\n    ):\n",
    )
    assert fingerprint_of(black_like) == fingerprint_of(ORIGIN_PORTED)
    assert fingerprint_of(ORIGIN_DRIFTED) != fingerprint_of(ORIGIN_PORTED)
    renamed_default = ORIGIN_PORTED.replace("attr, t)", "attr, t=None)")
    assert fingerprint_of(renamed_default) != fingerprint_of(ORIGIN_PORTED)
    assert symbols._FINGERPRINT_RE.match(fingerprint_of(ORIGIN_PORTED))


def test_ambiguous_symbol_is_an_error():
    text = "class FP32LayerNorm:\n    pass\n\n\nclass FP32LayerNorm:\n    pass\n"
    with pytest.raises(common.ToolError, match="defined 2 times"):
        symbols.locate(text, "FP32LayerNorm", "x.py")


################################################################################
# check / diff
################################################################################
def test_check_in_sync(capsys, origin, ours):
    code, report, _ = ours.run(capsys, "check")
    port = report["ports"][0]
    assert code == 0
    assert port["ref"]["state"] == "same"
    assert port["ref"]["commit"] == origin.recorded
    assert port["merged"]["merged"] is False
    assert port["default_branch"]["ref"] == "refs/heads/main"
    assert port["default_branch"]["state"] == "changed"
    assert port["default_branch"]["equals_pre_pr"] is True
    assert port["reasons"] == []


def test_check_pre_pr_is_the_merge_base_when_the_head_is_a_merge(capsys, tmp_path):
    """The PR merged main into itself, so its head is a merge commit.

    ``head^`` (its first parent) holds the PR's own code; the code before the PR
    is the merge-base of the head with the default branch. FastVideo PR 1245's
    recorded head is such a merge ("Merge branch 'main' into ...").
    """
    origin = Origin(tmp_path / "origin")
    commit_file(origin.path, "README.md", "main moved on\n", "unrelated main work")
    git(origin.path, "checkout", "-q", "pr")
    git(origin.path, "merge", "-q", "--no-ff", "-m", "Merge branch 'main'", "main")
    head = git(origin.path, "rev-parse", "HEAD")
    git(origin.path, "update-ref", PR_REF, head)
    git(origin.path, "checkout", "-q", "main")
    first_parent, _ = git(origin.path, "log", "-1", "--format=%P", head).split()
    assert first_parent == origin.recorded  # head^ = the PR's ported code
    origin.recorded = head
    ours = Ours(tmp_path / "ours", origin)

    code, report, _ = ours.run(capsys, "check")
    port = report["ports"][0]
    assert code == 0
    assert port["ref"] == {**port["ref"], "commit": head, "state": "same"}
    assert port["merged"]["merged"] is False
    assert port["default_branch"]["state"] == "changed"
    assert port["default_branch"]["equals_pre_pr"] is True
    cli.main(["check", "--manifest", str(ours.manifest), "--repo-root", str(ours.root)])
    text = capsys.readouterr().out
    assert "changed  (informational)  [= the symbol before the PR's first commit]" in (
        text
    )

    # Once merged, the head is on the default branch and is its own merge-base:
    # no pre-PR point is known, so the merged code is never called "pre-PR".
    git(origin.path, "merge", "-q", "--no-ff", "-m", "Merge PR", "pr")
    code, report, _ = ours.run(capsys, "check")
    port = report["ports"][0]
    assert (code, port["merged"]["merged"]) == (0, True)
    assert port["default_branch"]["state"] == "same"
    assert port["default_branch"]["equals_pre_pr"] is False


def test_check_cosmetic_pr_change_is_not_drift(capsys, origin, ours):
    origin.push_pr(ORIGIN_COSMETIC)
    code, report, _ = ours.run(capsys, "check")
    assert code == 0
    assert report["ports"][0]["ref"]["state"] == "cosmetic"


def test_check_drift_on_pr_head(capsys, origin, ours):
    head = origin.push_pr(ORIGIN_DRIFTED)
    code, report, _ = ours.run(capsys, "check")
    port = report["ports"][0]
    assert code == 1
    assert port["ref"] == {
        "ref": PR_REF,
        "commit": head,
        "fingerprint": fingerprint_of(ORIGIN_DRIFTED),
        "state": "changed",
        "diff": port["ref"]["diff"],
    }
    assert "+        if torch.is_grad_enabled():\n" in port["ref"]["diff"]
    assert port["reasons"] == [
        f"FP32LayerNorm changed on {PR_REF} ({head[:12]}) since {origin.recorded[:12]}"
    ]
    cli.main(["check", "--manifest", str(ours.manifest)])
    text = capsys.readouterr().out
    assert text.startswith("fp32: DRIFT\n")
    assert "+        if torch.is_grad_enabled():" in text


def test_check_pr_merged_into_default_branch(capsys, origin, ours):
    git(origin.path, "merge", "-q", "--no-ff", "-m", "Merge PR", "pr")
    code, report, _ = ours.run(capsys, "check")
    port = report["ports"][0]
    assert code == 0
    assert port["merged"] == {
        "merged": True,
        "how": "ancestor",
        "commit": origin.recorded,
    }
    assert port["authority"] == "default_branch"
    assert port["default_branch"]["state"] == "same"

    # later edits on the default branch are drift once the PR has landed
    commit_file(origin.path, ORIGIN_PATH, ORIGIN_DRIFTED, "follow-up")
    code, report, _ = ours.run(capsys, "check")
    assert code == 1
    assert report["ports"][0]["reasons"][0].startswith(
        "FP32LayerNorm changed on refs/heads/main"
    )


def test_check_squash_merge_is_detected(capsys, origin, ours):
    sha = commit_file(origin.path, ORIGIN_PATH, ORIGIN_PORTED, "Perf: cache (#1245)")
    code, report, _ = ours.run(capsys, "check")
    assert code == 0
    assert report["ports"][0]["merged"] == {
        "merged": True,
        "how": "squash",
        "commit": sha,
    }


def test_check_symbol_removed(capsys, origin, ours):
    origin.push_pr(ORIGIN_REMOVED)
    code, report, _ = ours.run(capsys, "check")
    port = report["ports"][0]
    assert code == 1
    assert port["ref"]["state"] == "missing"
    assert port["ref"]["fingerprint"] is None
    assert "FP32LayerNorm is gone on refs/pull/1245/head" in port["reasons"][0]


def test_check_recorded_commit_missing(capsys, tmp_path, origin):
    ours = Ours(tmp_path / "ours", origin, commit="1" * 40)
    code, report, err = ours.run(capsys, "check")
    assert code == 2
    assert "recorded origin commit 111111111111 is not in origin" in report["error"]
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_check_missing_pr_ref_is_an_error(capsys, origin, ours):
    git(origin.path, "update-ref", "-d", PR_REF)
    code, report, _ = ours.run(capsys, "check")
    assert code == 2
    assert f"{PR_REF} not found" in report["error"]
    code, report, _ = ours.run(capsys, "check", "--ref", "pr")
    assert code == 0
    assert report["ports"][0]["merged"]["merged"] is None


def test_check_bare_origin_and_file_url(capsys, tmp_path, origin, ours):
    origin.push_pr(ORIGIN_DRIFTED)
    bare = tmp_path / "mirror.git"
    git(tmp_path, "clone", "-q", "--mirror", str(origin.path), str(bare))
    for spec in (str(bare), bare.as_uri()):
        code, report, _ = ours.run(capsys, "check", "--origin", spec)
        assert code == 1, spec
        assert report["ports"][0]["default_branch"]["ref"] == "refs/heads/main"
        assert report["ports"][0]["ref"]["state"] == "changed"


def test_check_url_offline_is_an_error(capsys, monkeypatch, ours):
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "file")  # no network, guaranteed
    url = "https://github.com/hao-ai-lab/FastVideo"
    code, report, err = ours.run(capsys, "check", "--origin", url)
    assert code == 2
    assert f"cannot reach origin {url} (offline?)" in report["error"]
    assert err.count("\n") == 1


def test_diff_recorded_origin_against_ours(capsys, ours):
    code, report, _ = ours.run(capsys, "diff")
    text = report["ports"][0]["diff"]
    assert code == 0
    assert text.startswith(f"--- a/{ORIGIN_PATH}::FP32LayerNorm@")
    assert f"+++ b/{TARGET_PATH}::FP32LayerNorm\n" in text
    assert "-    def _fp32_cached(self, attr, t):\n" in text
    assert "+    def forward_native(self, x):\n" in text


################################################################################
# status / bump / record
################################################################################
def test_status_in_sync_and_after_edits(capsys, ours):
    code, report, _ = ours.run(capsys, "status")
    assert code == 0
    assert report["ports"][0]["ours"]["state"] == "ok"

    target = ours.root / TARGET_PATH
    target.write_text(OURS.replace('    """Ours."""\n', "    # reworded\n"))
    assert ours.run(capsys, "status")[0] == 0  # comment/docstring only

    target.write_text(OURS.replace("self.n = n", "self.n = n + 1"))
    code, report, _ = ours.run(capsys, "status")
    assert code == 1
    assert report["ports"][0]["ours"]["state"] == "changed"
    assert report["ports"][0]["in_sync"] is False


def test_status_missing_symbol_is_drift(capsys, ours):
    (ours.root / TARGET_PATH).write_text("x = 1\n")
    code, report, _ = ours.run(capsys, "status")
    assert code == 1
    assert report["ports"][0]["ours"]["state"] == "missing-symbol"


def test_bump_round_trip_keeps_other_bytes(capsys, origin, ours):
    head = origin.push_pr(ORIGIN_DRIFTED)
    before = ours.manifest.read_text()
    assert ours.run(capsys, "check")[0] == 1

    code, report, _ = ours.run(capsys, "bump", "--to", PR_REF, "--dry-run")
    assert (code, report["ports"][0]["written"]) == (0, False)
    assert ours.manifest.read_text() == before

    code, report, _ = ours.run(capsys, "bump", "--to", PR_REF)
    assert code == 0
    assert report["ports"][0]["new"] == {
        "commit": head,
        "fingerprint": fingerprint_of(ORIGIN_DRIFTED),
    }
    after = ours.manifest.read_text()
    assert changed_lines(before, after) == [
        f'-origin_commit   = "{origin.recorded}"   # recorded',
        f'+origin_commit   = "{head}"   # recorded',
        f'-origin_fingerprint = "{fingerprint_of(ORIGIN_PORTED)}"',
        f'+origin_fingerprint = "{fingerprint_of(ORIGIN_DRIFTED)}"',
    ]
    assert ours.run(capsys, "check")[0] == 0
    code, report, _ = ours.run(capsys, "bump", "--to", PR_REF)
    assert report["ports"][0]["changed"] is False


def test_record_round_trip(capsys, ours):
    before = ours.manifest.read_text()
    edited = OURS.replace("self.n = n", "self.n = int(n)")
    (ours.root / TARGET_PATH).write_text(edited)
    assert ours.run(capsys, "status")[0] == 1
    code, report, _ = ours.run(capsys, "record")
    assert code == 0 and report["ports"][0]["written"] is True
    assert changed_lines(before, ours.manifest.read_text()) == [
        f'-target_fingerprint = "{fingerprint_of(OURS)}"',
        f'+target_fingerprint = "{fingerprint_of(edited)}"',
    ]
    assert ours.run(capsys, "status")[0] == 0
    assert ours.run(capsys, "bump", "--ours")[1]["ports"][0]["changed"] is False


def test_manifest_edit_refuses_ambiguous_text():
    text = MANIFEST.format(
        origin="o", commit="a" * 40, ofp="", tfp="", target="t.py", test="u.py",
        upstream="t.py",
    )  # fmt: skip
    value = {"target_fingerprint": "ast1:" + "0" * 16}
    edited = manifest.update_manifest_text(text, 0, value)
    assert changed_lines(text, edited) == [
        '-target_fingerprint = ""',
        f'+target_fingerprint = "{value["target_fingerprint"]}"',
    ]
    # a look-alike line inside a multi-line string: refuse rather than guess
    lookalike = text.replace(
        "pr = 1245", 'notes = """\ntarget_fingerprint = "x"\n"""\npr = 1245'
    )
    with pytest.raises(common.ToolError, match="need exactly one"):
        manifest.update_manifest_text(lookalike, 0, value)
    literal = text.replace('target_fingerprint = ""', "target_fingerprint = ''")
    with pytest.raises(common.ToolError, match="need exactly one"):
        manifest.update_manifest_text(literal, 0, value)


################################################################################
# export
################################################################################
def test_export_merges_at_method_level(capsys, tmp_path, ours):
    checkout = make_checkout(tmp_path / "sglang")
    code, report, _ = ours.run(capsys, "export", "--sglang", str(checkout))
    port = report["ports"][0]
    assert code == 0
    assert port["replaced"] == ["__init__", "forward_native"]
    assert port["replaced_differing"] == ["forward_native"]
    assert port["added"] == ["_CACHE"]
    assert port["kept"] == ["forward_npu", "forward_xpu"]
    assert port["imports_added"] == ["import functools"]  # OrderedDict: upstream has
    assert [h.split(" (")[0] for h in port["helpers_added"]] == [
        "assignment _SCALE",
        "def _double",
        "def _helper",
    ]
    assert port["conflicts"] == []
    assert port["test"] == {"path": TEST_PATH, "state": "added"}
    assert (checkout / TEST_PATH).read_text() == OUR_TEST

    result = (checkout / TARGET_PATH).read_text()
    _assert_only_class_replaced(UPSTREAM, result)
    module = _import_file(checkout / TARGET_PATH)
    norm = module.FP32LayerNorm(3)
    assert norm.forward_native(1) == ("ours", 4, 4)
    assert norm.forward_npu(1) == ("npu", ("ours", 4, 4))  # kept, calls ours
    assert norm.forward_xpu(1) == ("xpu", os.sep, 1)
    assert module.Before().forward_npu() == "before-npu"
    assert module.After().forward_xpu() == "after-xpu"
    assert "    # NPU path, upstream only\n    def forward_npu" in result


def _assert_only_class_replaced(old: str, new: str) -> None:
    """Lines outside the upstream class are untouched; only insertions elsewhere."""
    node = symbols.locate(old, "FP32LayerNorm", "old").node
    span = range(node.lineno - 1, node.end_lineno)
    matcher = difflib.SequenceMatcher(None, old.splitlines(True), new.splitlines(True))
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            assert set(range(i1, i2)) <= set(span), (tag, i1, i2)


def _import_file(path: Path):
    spec = importlib.util.spec_from_file_location("exported_layernorm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_dry_run_patch_applies(capsys, tmp_path, ours):
    checkout = make_checkout(tmp_path / "sglang")
    patch = tmp_path / "export.patch"
    argv = ("export", "--sglang", str(checkout), "--patch", str(patch), "--dry-run")
    code, report, _ = ours.run(capsys, *argv)
    assert code == 0 and report["ports"][0]["written"] is False
    assert git(checkout, "status", "--porcelain") == ""
    git(checkout, "apply", str(patch))
    expected = splice.splice_class(UPSTREAM, OURS, "FP32LayerNorm").text
    assert (checkout / TARGET_PATH).read_text() == expected
    assert (checkout / TEST_PATH).read_text() == OUR_TEST


def test_export_refuses_dirty_target(capsys, tmp_path, ours):
    checkout = make_checkout(tmp_path / "sglang")
    (checkout / "stray.txt").write_text("x")
    code, report, err = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 2
    assert "work tree is dirty (1 entries)" in report["error"]
    assert err.count("\n") == 1
    assert (checkout / TARGET_PATH).read_text() == UPSTREAM


def test_export_refuses_unrecorded_local_edit(capsys, tmp_path, ours):
    checkout = make_checkout(tmp_path / "sglang")
    (ours.root / TARGET_PATH).write_text(OURS.replace("self.n = n", "self.n = 0"))
    code, report, _ = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 1
    assert report["ports"][0]["written"] is False
    assert (checkout / TARGET_PATH).read_text() == UPSTREAM


def test_export_refuses_dotdot_path(capsys, tmp_path, origin):
    ours = Ours(tmp_path / "ours", origin, upstream="../escape.py")
    checkout = make_checkout(tmp_path / "sglang")
    code, report, _ = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 2
    assert "must be a relative path without '..'" in report["error"]
    assert not (tmp_path / "escape.py").exists()


def test_export_refuses_symlink_traversal(capsys, tmp_path, ours):
    outside = tmp_path / "outside"
    (outside / "layers").mkdir(parents=True)
    victim = outside / "layers" / "layernorm.py"
    victim.write_text(UPSTREAM)
    checkout = tmp_path / "sglang"
    link_parent = checkout / "python/sglang/multimodal_gen"
    link_parent.mkdir(parents=True)
    (link_parent / "runtime").symlink_to(outside)
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "symlinked runtime")
    code, report, _ = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 2
    assert "refusing to write through symlink" in report["error"]
    assert victim.read_text() == UPSTREAM


def test_cli_exit_codes_and_one_line_errors(tmp_path, ours):
    base = [sys.executable, str(SCRIPT), "status", "--repo-root", str(ours.root)]
    ok = subprocess.run([*base, "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ports"][0]["name"] == "fp32"
    bad = subprocess.run(
        [*base, "--manifest", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


################################################################################
# export steps ([[port.export]]) on small synthetic files
################################################################################
UP_NUMERICS = '''"""Upstream numerics."""

import triton


@triton.jit
def up_one(x):
    return x


__all__ = [
    "up_one",
    "zeta",
]
'''
OUR_NUMERICS = '''"""Our numerics."""

import math

import triton


# ours: why it exists
@triton.jit
def our_b(x):
    return math.floor(x)


def up_one(x):
    return x


__all__ = ["our_b", "up_one"]
'''
UP_FACADE = """_CUDA = 1
_SPECS = (
    ("op.a", "B.T", "x:y", _CUDA),
    (
        "op.b",
        "B.T",
        "x:z",
        _CUDA,
    ),
)

_EXPORTS = {
    "a": "m.a",
    # Normalization: upstream's
    "b": "m.b",
}
"""
OUR_FACADE = """_CUDA = 1
_SPECS = (
    (
        "op.b",
        "B.T",
        "x:other",
        _CUDA,
    ),
    ("op.c", "B.T", "x:c", _CUDA),
)
_EXPORTS = {
    # ours
    "b": "m.b",
    "c": "m.c",
}
"""
UP_MD = """# Kernels

### Norm variants

| Entry point | Backend |
|---|---|
| `a` | Triton |

```
### not a heading
| not a row |
```

### Other

text
"""
OUR_MD = """### Norm variants

| Entry point | Backend |
|---|---|
| `a` | Triton |
| `ours` | Triton |

### Brand new

| X | Y |
|---|---|
| `n` | 1 |
"""
UP_ROUTED = '''class Fused:
    def forward_cuda(self, x):
        """Doc."""
        if x > 100:
            return "big"
        return "upstream"

    def other(self, x):
        return x


class Plain:
    def forward_cuda(
        self, x
    ):
        # upstream's comment
        return "plain"
'''
OUR_ROUTED = '''def _ours(x):
    return "ours" if x == 1 else None


class Fused:
    def forward_cuda(self, x):
        out = _ours(x)
        if out is not None:
            return out
        # the fallback: upstream's own body
        return "ours-fallback"


class Plain:
    def forward_cuda(self, x):
        """Our doc."""
        if x < 0:
            return "neg"
        return x
'''
UP_UPDATER = """import os


def keep():
    return os.sep


# upstream comment
def changed(a, b=1):
    return "old"


class Updater:
    def method(self):
        return "old"

    def other(self):
        return "other"
"""
OUR_UPDATER = """import json


def changed(a, b=1):
    value = json.dumps("new")  # a local: not a name the module must define
    return value


class Updater:
    def method(self):
        return "new"
"""


def _exec(text: str) -> dict:
    namespace: dict = {}
    exec(compile(text, "<exported>", "exec"), namespace)
    return namespace


def test_defs_appends_before_all_and_extends_it():
    done = inplace.extend_defs(UP_NUMERICS, OUR_NUMERICS)
    assert done.added == ["our_b"]
    assert done.conflicts == ["up_one: upstream has it (kept)"]
    assert inplace.additions_only(UP_NUMERICS, done.text, "n") > 0
    assert "import math\n" in done.text
    assert "# ours: why it exists\n@triton.jit\ndef our_b(x):" in done.text
    assert '    "our_b",\n    "up_one",\n    "zeta",\n]' in done.text
    assert done.text.index("def our_b") < done.text.index("__all__")
    assert done.text.count("def up_one") == 1


def test_defs_one_line_all_gets_an_added_statement():
    up = UP_NUMERICS.replace('[\n    "up_one",\n    "zeta",\n]', '["up_one"]')
    done = inplace.extend_defs(up, OUR_NUMERICS)
    assert done.text.endswith('__all__ = ["up_one"]\n__all__ += ["our_b"]\n')
    inplace.additions_only(up, done.text, "n")


def test_facade_inserts_specs_and_exports_without_duplicates():
    done = inplace.extend_facade(
        UP_FACADE, OUR_FACADE, "_SPECS", "_EXPORTS", "# Normalization"
    )
    assert inplace.additions_only(UP_FACADE, done.text, "f") == 2
    assert done.added == ['_SPECS "op.c" "B.T"', "_EXPORTS c"]
    assert done.conflicts == [
        '_SPECS "op.b" "B.T": upstream has it (kept)',
        "_EXPORTS b: upstream has it (same)",
    ]
    assert '    ("op.c", "B.T", "x:c", _CUDA),\n)' in done.text
    assert '# Normalization: upstream\'s\n    "c": "m.c",\n    "b"' in done.text
    namespace = _exec(done.text)
    assert [s[0] for s in namespace["_SPECS"]] == ["op.a", "op.b", "op.c"]
    assert list(namespace["_EXPORTS"]) == ["a", "c", "b"]
    no_anchor = inplace.extend_facade(UP_FACADE, OUR_FACADE, "_SPECS", "_EXPORTS", "")
    assert list(_exec(no_anchor.text)["_EXPORTS"]) == ["a", "b", "c"]


def test_facade_spec_naming_an_unknown_name_is_an_error():
    ours = OUR_FACADE.replace('"x:c", _CUDA', '"x:c", _ROCM')
    with pytest.raises(common.ToolError, match="uses _ROCM: not in upstream"):
        inplace.extend_facade(UP_FACADE, ours, "_SPECS", "_EXPORTS", "")


def test_tables_append_rows_by_heading_and_new_sections_at_the_end():
    done = inplace.extend_tables(UP_MD, OUR_MD)
    assert inplace.additions_only(UP_MD, done.text, "md") > 0
    assert "| `a` | Triton |\n| `ours` | Triton |\n\n```" in done.text
    tail = "text\n\n### Brand new\n\n| X | Y |\n|---|---|\n| `n` | 1 |\n"
    assert done.text.endswith(tail)
    assert done.conflicts == ["### Norm variants: upstream has `a`"]
    assert inplace.extend_tables(done.text, OUR_MD).text.count("`ours`") == 1


def test_prelude_goes_first_and_upstream_body_stays_the_fallback():
    done = routing.prepend_preludes(
        UP_ROUTED, OUR_ROUTED, ["Fused.forward_cuda", "Plain.forward_cuda"]
    )
    assert done.routed == ["Fused.forward_cuda", "Plain.forward_cuda"]
    assert "_ours" in done.needs
    inplace.additions_only(UP_ROUTED, done.text, "routed")
    assert '"""Doc."""\n        out = _ours(x)\n' in done.text
    assert "fallback" not in done.text  # the comment over our final return stays
    expected = '    ):\n        if x < 0:\n            return "neg"\n        # upstream'
    assert expected in done.text
    namespace = _exec(OUR_ROUTED.split("\n\n\n")[0] + "\n\n\n" + done.text)
    fused, plain = namespace["Fused"](), namespace["Plain"]()
    assert [fused.forward_cuda(x) for x in (1, 2, 101)] == ["ours", "upstream", "big"]
    assert [plain.forward_cuda(x) for x in (-1, 1)] == ["neg", "plain"]
    again = routing.prepend_preludes(done.text, OUR_ROUTED, ["Fused.forward_cuda"])
    assert again.already == ["Fused.forward_cuda"] and again.text == done.text


def test_prelude_needs_a_final_return():
    ours = OUR_ROUTED.replace('        return "ours-fallback"\n', "        pass\n")
    with pytest.raises(common.ToolError, match="must end with a return"):
        routing.prepend_preludes(UP_ROUTED, ours, ["Fused.forward_cuda"])


def test_functions_replaces_only_the_named_functions_and_methods():
    done = routing.replace_functions(UP_UPDATER, OUR_UPDATER)
    assert done.replaced == ["changed", "Updater.method"]
    assert done.conflicts == []
    text, imports, missing = routing.add_imports(done.text, OUR_UPDATER, done.needs)
    assert imports == ["import json"] and not missing
    assert sorted(changed_lines(UP_UPDATER, text)) == sorted(
        [
            "+import json",
            '-    return "old"',
            '-        return "old"',
            '+    value = json.dumps("new")  # a local: not a name the module must define',
            "+    return value",
            '+        return "new"',
        ]
    )
    namespace = _exec(text)
    assert namespace["changed"](1) == '"new"' and namespace["keep"]() == os.sep
    assert namespace["Updater"]().other() == "other"
    assert "# upstream comment\ndef changed" in text
    extra = OUR_UPDATER + "\n\ndef gone():\n    pass\n"
    with pytest.raises(common.ToolError, match="no function gone"):
        routing.replace_functions(UP_UPDATER, extra)


@pytest.mark.parametrize(
    "step, message",
    [
        ('kind = "nope"\npath = "a.py"', "kind must be one of"),
        ('kind = "prelude"\npath = "a.py"', "kind prelude needs methods"),
        ('kind = "prelude"\npath = "a.py"\nmethods = ["f"]', "Class.method names"),
        ('kind = "copy"\npaths = ["../x.py"]', "without '..'"),
        ('kind = "defs"\npath = "a.py"\nbogus = 1', "unknown keys for kind defs"),
        ('kind = "copy"\npaths = ["a.py"]\nreplace = "yes"', "replace must be a bool"),
    ],
)
def test_manifest_export_steps_are_validated(tmp_path, origin, step, message):
    ours = Ours(tmp_path / "ours", origin)
    ours.manifest.write_text(ours.manifest.read_text() + f"\n[[port.export]]\n{step}\n")
    with pytest.raises(common.ToolError, match=message):
        manifest.load_manifest(ours.manifest)


E2E_STEPS = """
[[port.export]]
kind = "prelude"
path = "{target}"
methods = ["After.forward_xpu"]

[[port.export]]
kind = "copy"
paths = ["python/sglang/kernels/new_*.py"]

[[port.export]]
kind = "defs"
path = "python/sglang/kernels/numerics.py"

[[port.export]]
kind = "facade"
path = "python/sglang/kernels/__init__.py"
after_comment = "# Normalization"

[[port.export]]
kind = "tables"
path = "python/sglang/kernels/README.md"

[[port.export]]
kind = "functions"
path = "python/sglang/updater.py"
optional = true
"""
E2E_OURS_AFTER = """

class After:
    def forward_xpu(self):
        out = _double(21)
        if out is not None:
            return out
        return None
"""
E2E_FILES = {
    "python/sglang/kernels/numerics.py": (UP_NUMERICS, OUR_NUMERICS),
    "python/sglang/kernels/__init__.py": (UP_FACADE, OUR_FACADE),
    "python/sglang/kernels/README.md": (UP_MD, OUR_MD),
    "python/sglang/updater.py": (UP_UPDATER, OUR_UPDATER),
}


def _e2e(tmp_path, origin, limit=0, updater=False):
    ours = Ours(tmp_path / "ours", origin)
    text = ours.manifest.read_text().replace(
        'upstream_test_path = "',
        f'export_max_outside_lines = {limit}\nupstream_test_path = "',
    )
    ours.manifest.write_text(text + E2E_STEPS.format(target=TARGET_PATH))
    (ours.root / TARGET_PATH).write_text(OURS + E2E_OURS_AFTER)
    checkout = make_checkout(tmp_path / "sglang")
    for rel, (up, our) in E2E_FILES.items():
        if updater or "updater" not in rel:
            (ours.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (ours.root / rel).write_text(our)
        commit_file(checkout, rel, up, f"upstream {rel}")
    (ours.root / "python/sglang/kernels/new_kernel.py").write_text("K = 1\n")
    return ours, checkout


def _masked(text: str) -> str:
    """``text`` with FP32LayerNorm's lines replaced by one marker line."""
    node = symbols.locate(text, "FP32LayerNorm", "t").node
    lines = text.splitlines(True)
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return "".join(lines[: first - 1] + ["CLASS\n"] + lines[node.end_lineno :])


def test_export_steps_end_to_end(capsys, tmp_path, origin):
    ours, checkout = _e2e(tmp_path, origin)
    patch = tmp_path / "e2e.patch"
    argv = ("export", "--sglang", str(checkout), "--patch", str(patch))
    code, report, err = ours.run(capsys, *argv)
    assert code == 0, err
    port = report["ports"][0]
    kinds = [(s["kind"], s.get("state")) for s in port["steps"]]
    assert kinds[-1] == ("functions", "skipped (ours absent)")
    assert port["files"]["python/sglang/kernels/new_kernel.py"] == "+1 -0 (new)"
    for line in git(checkout, "diff", "--numstat").splitlines():
        _, removed, rel = line.split("\t")
        if rel != TARGET_PATH:
            assert removed == "0", line  # extended in place: additions only
    assert "updater" not in git(checkout, "status", "--porcelain")
    module = _import_file(checkout / TARGET_PATH)
    assert module.After().forward_xpu() == 42  # routed through our prelude
    new = (checkout / TARGET_PATH).read_text()
    diff = difflib.unified_diff(
        _masked(UPSTREAM).splitlines(), _masked(new).splitlines(), n=0
    )
    outside = [d for d in diff if d[:1] in ("+", "-") and d[:3] not in ("+++", "---")]
    assert port["outside_class_lines"] == len(outside) > 0  # blank lines count
    fresh = make_checkout(tmp_path / "fresh")
    for rel, (up, _) in E2E_FILES.items():
        commit_file(fresh, rel, up, rel)
    git(fresh, "apply", "--check", str(patch))


def test_export_functions_step_when_ours_exists(capsys, tmp_path, origin):
    ours, checkout = _e2e(tmp_path, origin, updater=True)
    code, report, err = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 0, err
    step = report["ports"][0]["steps"][-1]
    assert step["replaced"] == ["changed", "Updater.method"]
    assert step["imports_added"] == ["import json"]
    assert "def keep" in (checkout / "python/sglang/updater.py").read_text()


def test_export_outside_line_limit_fails_before_writing(capsys, tmp_path, origin):
    ours, checkout = _e2e(tmp_path, origin, limit=3)
    code, report, _ = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 2
    assert "15 changed lines outside FP32LayerNorm (0 of them" in report["error"]
    assert "export_max_outside_lines = 3" in report["error"]
    assert git(checkout, "status", "--porcelain") == ""


def test_export_copy_refuses_to_replace_a_different_upstream_file(
    capsys, tmp_path, origin
):
    ours, checkout = _e2e(tmp_path, origin)
    commit_file(checkout, "python/sglang/kernels/new_kernel.py", "K = 2\n", "clash")
    code, report, _ = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 2
    assert "set replace = true" in report["error"]


def test_export_again_into_an_exported_tree_changes_nothing(capsys, tmp_path, origin):
    ours, checkout = _e2e(tmp_path, origin)
    code, _, err = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 0, err
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "exported")
    code, report, err = ours.run(capsys, "export", "--sglang", str(checkout))
    assert code == 0, err
    port = report["ports"][0]
    assert port["files"] == {} and port["outside_class_lines"] == 0
    assert git(checkout, "status", "--porcelain") == ""
    prelude = [s for s in port["steps"] if s["kind"] == "prelude"][0]
    assert prelude["already"] == ["After.forward_xpu"]


def test_test_needs_follow_module_aliases():
    from fastvideo_sync.export import _test_needs

    module = "sglang.multimodal_gen.runtime.layers.layernorm"
    text = (
        "from sglang.multimodal_gen.runtime.layers import layernorm as ln\n"
        "import sglang.multimodal_gen.runtime.layers.layernorm as m\n"
        f"from {module} import FP32LayerNorm\n"
        "ln.drop_caches(ln.FP32LayerNorm)\n"
        "m.helper\n"
        "other.not_this\n"
    )
    assert _test_needs(text, module) == {"FP32LayerNorm", "drop_caches", "helper"}


def test_export_imports_join_upstream_blocks_in_isort_order():
    upstream = (
        "import torch\nimport torch.nn as nn\n\nfrom pkg.ops import (\n"
        "    alpha,\n    omega,\n)\n\n\nclass FP32LayerNorm:\n    pass\n"
    )
    ours = (
        "import torch\nfrom torch.x import Y\n\nfrom pkg.ops import CONST, beta, alpha\n"
        "\n\nclass FP32LayerNorm:\n    def f(self):\n        return CONST, beta, Y\n"
    )
    done = splice.splice_class(upstream, ours, "FP32LayerNorm")
    assert done.text.startswith(
        "import torch\nimport torch.nn as nn\nfrom torch.x import Y\n\n"
        "from pkg.ops import (\n    CONST,\n    alpha,\n    beta,\n    omega,\n)\n"
    )


################################################################################
# REAL MANIFEST: runs `status` on the repo's own scripts/fastvideo_ports.toml.
# It fails whenever FP32LayerNorm is edited without re-recording our side:
#     python scripts/sync_fastvideo_port.py record
################################################################################
def test_REAL_MANIFEST_status_in_sync(capsys):
    code = cli.main(["status", "--json"])
    report = json.loads(capsys.readouterr().out)
    ours = report["ports"][0]["ours"]
    assert code == 0, (
        f"{ours['path']}::{ours['symbol']} is {ours['state']} "
        f"({ours['fingerprint']} vs recorded {ours['recorded']}); review, then run "
        "`python scripts/sync_fastvideo_port.py record`"
    )
