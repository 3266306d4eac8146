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
from .manifest import ExportStep, Port, _check_relpath
from .origin import run_git
from .routing import outside_lines
from .splice import splice_class
from .steps import Plan, copy_sources, run_copy, run_step
from .symbols import parse_source, unified_diff


def _module_of(path: str) -> str:
    parts = list(PurePosixPath(path).with_suffix("").parts)
    return ".".join(parts[1:] if parts[0] == "python" else parts)


def _test_needs(test_text: str | None, module: str) -> set[str]:
    """Names a test uses from the ported module; the export must have them.

    Both ``from module import name`` and attribute access through the module
    (``from package import layernorm as ln`` then ``ln.name``) count.
    """
    if not test_text:
        return set()
    needs, aliases = set(), set()
    package, _, leaf = module.rpartition(".")
    tree = parse_source(test_text, "our test")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level:
            if node.module == module:
                needs.update(a.name for a in node.names if a.name != "*")
            elif node.module == package:
                aliases.update(a.asname or a.name for a in node.names if a.name == leaf)
        elif isinstance(node, ast.Import):
            aliases.update(
                a.asname for a in node.names if a.name == module and a.asname
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            needs.add(node.attr)
    return needs


def _counts(old: str | None, new: str) -> str:
    """``+added -removed`` lines, as git diff --stat counts them."""
    added = removed = 0
    for line in unified_diff(old or "", new, "a", "b").splitlines()[2:]:
        added += line.startswith("+")
        removed += line.startswith("-")
    return f"+{added} -{removed}" + (" (new)" if old is None else "")


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
    plan = Plan(root, safe_destination)
    old = plan.current(port.upstream_path)
    steps, class_needs = [], set()
    # copies first: the class splice must provide what the copied tests use
    copied = {}
    legacy = ExportStep("copy", "target_test_path", replace=True)
    if port.target_test_path:
        legacy.paths = [port.target_test_path]
    globbed = set()
    for step in port.export:
        if step.kind == "copy":
            globbed.update(copy_sources(step, repo_root))
    legacy_needed = bool(port.target_test_path) and port.target_test_path not in globbed
    for step in [legacy] * legacy_needed + port.export:
        if step.kind == "copy":
            report = run_copy(step, repo_root, plan)
            copied.update(report["files"])
            steps.append({"kind": "copy", "where": step.where, **report})
    for step in port.export:
        if step.kind != "copy":
            report, needs = run_step(step, repo_root, plan, port.upstream_path)
            class_needs |= needs
            steps.append(
                {"kind": step.kind, "where": step.where, "path": step.dest, **report}
            )
    module = _module_of(port.upstream_path)
    test_needs = set()
    for rel in copied:
        if rel.endswith(".py"):
            test_needs |= _test_needs(plan.current(rel), module)
    ours_text = read_text(repo_root / port.target_path, port.target_path)
    routed_text = plan.current(port.upstream_path)
    splice = splice_class(
        routed_text,
        ours_text,
        port.target_symbol,
        port.upstream_name,
        test_needs | class_needs,
    )
    plan.set(port.upstream_path, splice.text)
    outside = outside_lines(old, splice.text, port.upstream_name)
    # what the tests alone cost: the same splice without their needs
    without_tests = splice_class(
        routed_text,
        ours_text,
        port.target_symbol,
        port.upstream_name,
        class_needs,
    )
    for_tests = outside - outside_lines(old, without_tests.text, port.upstream_name)
    test_helpers = sorted(set(splice.helpers_added) - set(without_tests.helpers_added))
    limit = port.export_max_outside_lines
    if limit and outside > limit:
        raise ToolError(
            f"{port.upstream_path}: {outside} changed lines outside "
            f"{port.upstream_name} ({for_tests} of them only for the tests: "
            f"{'; '.join(h.split(' (')[0] for h in test_helpers) or '-'}), more "
            f"than export_max_outside_lines = {limit}; shrink what the class, the "
            "routing and the tests need at module level"
        )
    changes = plan.changes()
    if args.patch:
        Path(args.patch).write_bytes(git_patch(changes).encode("utf-8"))
    if not args.dry_run:
        for rel, before, after in changes:
            if before != after:
                path = safe_destination(root, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, after)
    test_state = copied.get(port.upstream_test_path) if port.target_test_path else None
    needs = test_needs
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
        "outside_class_lines": outside,
        "outside_class_lines_for_tests": for_tests,
        "helpers_for_tests": test_helpers,
        "outside_class_limit": limit or None,
        "steps": steps,
        "files": {
            rel: _counts(before, after)
            for rel, before, after in changes
            if before != after
        },
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
    limit = report["outside_class_limit"]
    lines.append(
        f"  outside   {report['outside_class_lines']} changed lines outside "
        f"{report['class']}"
        + (f" (limit {limit})" if limit else "")
        + f", {report['outside_class_lines_for_tests']} of them for the tests"
    )
    lines += [f"  for tests {h}" for h in report["helpers_for_tests"]]
    for step in report["steps"]:
        lines.append(f"  step      {step['kind']} {step.get('path', '')}".rstrip())
        for key, value in step.items():
            if key in ("kind", "where", "path") or not value:
                continue
            if isinstance(value, dict):
                value = [f"{k} ({v})" for k, v in value.items()]
            if isinstance(value, list):
                lines += [f"    {key:<9} {item}" for item in value]
            else:
                lines.append(f"    {key:<9} {value}")
    for rel, counts in report["files"].items():
        lines.append(f"  file      {rel} {counts}")
    if report["patch"]:
        lines.append(f"  patch     {report['patch']}")
    return "\n".join(lines)
