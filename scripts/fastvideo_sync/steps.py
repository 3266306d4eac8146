# SPDX-License-Identifier: Apache-2.0
"""The ``[[port.export]]`` steps of ``export``, planned in memory.

``Plan`` holds every file the export would write as (upstream text or None,
new text); steps read each other's results through it, so nothing touches the
checkout until every step (and every limit) has passed.
"""

from __future__ import annotations

from pathlib import Path

from .common import ToolError, read_text
from .inplace import additions_only, extend_defs, extend_facade, extend_tables
from .manifest import ExportStep, _check_relpath
from .routing import add_imports, prepend_preludes, replace_functions

# steps whose upstream file may only gain lines (checked after each step)
ADDITIONS_ONLY = ("defs", "facade", "tables")


class Plan:
    """Planned file contents, keyed by checkout-relative path."""

    def __init__(self, root: Path, destination) -> None:
        self.root = root
        self._destination = destination  # (root, rel) -> Path, safety-checked
        self.files: dict[str, list] = {}  # rel -> [upstream text or None, new]

    def current(self, rel: str, must_exist: bool = True) -> str | None:
        if rel not in self.files:
            dest = self._destination(self.root, rel)
            old = read_text(dest, rel) if dest.is_file() else None
            if old is None and must_exist:
                raise ToolError(f"{rel} not found in the checkout")
            self.files[rel] = [old, old]
        return self.files[rel][1]

    def set(self, rel: str, text: str) -> None:
        self.current(rel, must_exist=False)
        self.files[rel][1] = text

    def changes(self) -> list[tuple[str, str | None, str]]:
        return [(rel, old, new) for rel, (old, new) in self.files.items()]


def copy_sources(step: ExportStep, repo_root: Path) -> list[str]:
    """Our files a ``copy`` step names, globs expanded, sorted."""
    found: list[str] = []
    for pattern in step.paths:
        hits = sorted(
            p.relative_to(repo_root).as_posix()
            for p in repo_root.glob(pattern)
            if p.is_file()
        )
        if not hits and not step.optional:
            raise ToolError(f"{step.where}: {pattern} matches none of our files")
        found += [h for h in hits if h not in found]
    for rel in found:
        _check_relpath(rel, step.where)
    return found


def run_copy(step: ExportStep, repo_root: Path, plan: Plan) -> dict:
    states = {}
    for rel in copy_sources(step, repo_root):
        ours = read_text(repo_root / rel, rel)
        old = plan.current(rel, must_exist=False)
        if old is not None and old != ours and not step.replace:
            raise ToolError(
                f"{step.where}: upstream has a different {rel}; "
                "set replace = true to overwrite it"
            )
        states[rel] = (
            "added" if old is None else ("same" if old == ours else "replaced")
        )
        plan.set(rel, ours)
    return {"files": states}


def run_step(step: ExportStep, repo_root: Path, plan: Plan, class_path: str):
    """Run one non-copy step; returns its report and the names it needs from
    the class file (``prelude`` / ``functions`` steps on that file only)."""
    ours_path = repo_root / step.path
    if not ours_path.is_file():
        if step.optional:
            return {"state": "skipped (ours absent)"}, set()
        raise ToolError(f"{step.where}: our {step.path} does not exist")
    ours = read_text(ours_path, step.path)
    old = plan.current(step.dest)
    report: dict = {}
    needs: set[str] = set()
    if step.kind in ("prelude", "functions"):
        if step.kind == "prelude":
            done = prepend_preludes(old, ours, step.methods)
            report.update(routed=done.routed, already=done.already)
        else:
            done = replace_functions(old, ours, step.symbols)
            report.update(replaced=done.replaced)
        report["conflicts"] = done.conflicts
        text = done.text
        if step.dest == class_path:
            needs = done.needs  # the class splice adds helpers and imports
        else:
            text, imports, missing = add_imports(text, ours, done.needs)
            if missing:
                raise ToolError(
                    f"{step.where}: our code uses {', '.join(sorted(missing))}, "
                    f"which {step.dest} does not define"
                )
            report["imports_added"] = imports
    elif step.kind == "defs":
        done = extend_defs(old, ours)
        report.update(added=done.added, conflicts=done.conflicts)
        text = done.text
    elif step.kind == "facade":
        done = extend_facade(old, ours, step.specs, step.exports, step.after_comment)
        report.update(added=done.added, conflicts=done.conflicts)
        text = done.text
    else:
        done = extend_tables(old, ours)
        report.update(added=done.added, conflicts=done.conflicts)
        text = done.text
    if step.kind in ADDITIONS_ONLY:
        report["lines_added"] = additions_only(old, text, step.dest)
    plan.set(step.dest, text)
    return report, needs
