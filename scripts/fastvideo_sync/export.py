# SPDX-License-Identifier: Apache-2.0
"""The ``export`` command: write our spliced class and test into an SGLang checkout.

Safety checks on the checkout (clean work tree, no ``..``, no ``.git``, no
symlinks), the optional git patch, and the report; the merge is ``splice``.
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path, PurePosixPath

from .commands import our_symbol
from .common import DRIFT, OK, ToolError, read_text, write_atomic
from .manifest import Port, _check_relpath
from .origin import run_git
from .splice import splice_class
from .symbols import parse_source, unified_diff


def _module_of(path: str) -> str:
    parts = list(PurePosixPath(path).with_suffix("").parts)
    return ".".join(parts[1:] if parts[0] == "python" else parts)


def _test_needs(test_text: str | None, module: str) -> set[str]:
    """Names our test imports from the ported module; the export must have them."""
    if not test_text:
        return set()
    needs = set()
    for node in ast.walk(parse_source(test_text, "our test")):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == module
            and not node.level
        ):
            needs.update(a.name for a in node.names if a.name != "*")
    return needs


def checkout_root(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ToolError(f"--sglang {spec}: no such directory")
    real = path.resolve()
    top = run_git(["rev-parse", "--show-toplevel"], cwd=real, check=False)
    if top.returncode or Path(top.stdout.strip()).resolve() != real:
        raise ToolError(f"--sglang {spec}: not the root of a git work tree")
    return real


def safe_destination(root: Path, rel: str) -> Path:
    """``root/rel`` after checking no component is a symlink and it stays inside."""
    _check_relpath(rel, "export path")
    if ".git" in PurePosixPath(rel).parts:
        raise ToolError(f"refusing to write into git metadata: {rel}")
    current = root
    for part in PurePosixPath(rel).parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            break
        if stat.S_ISLNK(mode):
            raise ToolError(
                f"refusing to write through symlink {current.relative_to(root)}"
            )
    dest = root / rel
    if not os.path.realpath(dest).startswith(str(root) + os.sep):
        raise ToolError(f"{rel} escapes the checkout")
    if dest.exists() and not dest.is_file():
        raise ToolError(f"{rel} exists and is not a regular file")
    return dest


def git_patch(changes: list[tuple[str, str | None, str]]) -> str:
    """A ``git apply``-able patch for ``(path, old text or None, new text)``."""
    out = []
    for path, old, new in changes:
        if old == new:
            continue
        out.append(f"diff --git a/{path} b/{path}\n")
        if old is None:
            out.append("new file mode 100644\n")
        out.append(
            unified_diff(
                old or "", new, "/dev/null" if old is None else f"a/{path}", f"b/{path}"
            )
        )
    return "".join(out)


def export_port(port: Port, repo_root: Path, args) -> tuple[dict, int]:
    """Splice our port into an upstream checkout (see splice_class)."""
    _, state = our_symbol(port, repo_root)
    if state != "ok" and not args.allow_drift:
        report = {"name": port.name, "written": False, "ours_state": state}
        report["reason"] = (
            f"our {port.target_symbol} is {state}: review it and run record first "
            "(or pass --allow-drift)"
        )
        return report, DRIFT
    root = checkout_root(args.sglang)
    dirty = run_git(["status", "--porcelain", "--untracked-files=all"], cwd=root).stdout
    if dirty.strip():
        raise ToolError(
            f"--sglang {args.sglang}: work tree is dirty "
            f"({len(dirty.splitlines())} entries); commit or clean it first"
        )
    dest = safe_destination(root, port.upstream_path)
    if not dest.is_file():
        raise ToolError(f"{port.upstream_path} not found in the checkout")
    test_text = None
    if port.target_test_path:
        test_text = read_text(repo_root / port.target_test_path, port.target_test_path)
        test_dest = safe_destination(root, port.upstream_test_path)
    old = read_text(dest, port.upstream_path)
    ours_text = read_text(repo_root / port.target_path, port.target_path)
    needs = _test_needs(test_text, _module_of(port.upstream_path))
    splice = splice_class(old, ours_text, port.target_symbol, port.upstream_name, needs)
    changes = [(port.upstream_path, old, splice.text)]
    test_state = None
    if test_text is not None:
        old_test = (
            test_dest.read_bytes().decode("utf-8") if test_dest.exists() else None
        )
        test_state = (
            "added"
            if old_test is None
            else ("same" if old_test == test_text else "replaced")
        )
        changes.append((port.upstream_test_path, old_test, test_text))
    if args.patch:
        Path(args.patch).write_bytes(git_patch(changes).encode("utf-8"))
    if not args.dry_run:
        for rel, before, after in changes:
            if before != after:
                path = safe_destination(root, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, after)
    report = {
        "name": port.name,
        "checkout": str(root),
        "path": port.upstream_path,
        "class": port.upstream_name,
        "replaced": splice.replaced,
        "replaced_differing": splice.replaced_differing,
        "added": splice.added,
        "kept": splice.kept,
        "header_changed": splice.header_changed,
        "imports_added": splice.imports_added,
        "helpers_added": splice.helpers_added,
        "conflicts": splice.conflicts,
        "needed_by_test": sorted(needs),
        "test": {"path": port.upstream_test_path, "state": test_state},
        "patch": str(args.patch) if args.patch else None,
        "written": not args.dry_run,
        "ours_state": state,
    }
    return report, OK


def _export_text(report: dict) -> str:
    if "reason" in report:
        return f"{report['name']}: not exported: {report['reason']}"

    def names(key):
        return ", ".join(report[key]) or "-"

    written = "written" if report["written"] else "dry run, nothing written"
    lines = [f"{report['name']}: export into {report['checkout']} ({written})"]
    lines.append(f"  file      {report['path']} class {report['class']}")
    lines.append(f"  replaced  {names('replaced')}")
    lines.append(f"  (target's version differed: {names('replaced_differing')})")
    lines.append(f"  added     {names('added')}")
    lines.append(f"  kept      {names('kept')} (target-only)")
    if report["header_changed"]:
        lines.append("  header    decorators/bases taken from ours (they differed)")
    lines += [f"  import+   {i}" for i in report["imports_added"]]
    lines += [f"  helper+   {h}" for h in report["helpers_added"]]
    lines += [f"  conflict  {c}" for c in report["conflicts"]]
    if report["test"]["path"]:
        lines.append(
            f"  test      {report['test']['path']} ({report['test']['state']})"
        )
    if report["patch"]:
        lines.append(f"  patch     {report['patch']}")
    return "\n".join(lines)
