# SPDX-License-Identifier: Apache-2.0
"""Where ``export`` puts the imports the spliced class needs (upstream text).

Upstream runs isort (profile black) in pre-commit; an import placed where isort
would not put it gets rewritten there, and the PR's diff grows by upstream
lines. So: names from a module upstream already imports from, in a
parenthesized one-name-per-line block, join that block in isort's order; other
imports go after upstream's last import of the same top-level package, else
after upstream's leading imports. Only insertions, as everywhere in export.
"""

from __future__ import annotations

import ast


def _isort_key(name: str) -> tuple[int, str]:
    """isort's order_by_type: CONSTANTS, then Classes, then the rest."""
    if name.isupper() and len(name) > 1:
        rank = 0
    elif name[:1].isupper():
        rank = 1
    else:
        rank = 2
    return rank, name.lower()


def _root(stmt: ast.Import | ast.ImportFrom) -> str | None:
    if isinstance(stmt, ast.ImportFrom):
        return None if stmt.level else (stmt.module or "").split(".")[0]
    return stmt.names[0].name.split(".")[0]


def _one_name_per_line(stmt: ast.ImportFrom, lines: list[str]) -> bool:
    return (
        lines[stmt.lineno - 1].split("#")[0].rstrip().endswith("(")
        and lines[stmt.end_lineno - 1].strip().startswith(")")
        and len({a.lineno for a in stmt.names}) == len(stmt.names)
        and stmt.end_lineno - stmt.lineno - 1 == len(stmt.names)
    )


def place_imports(t_tree, t_lines, run_end, wanted, nl, edit, render) -> list[str]:
    """Insert ``wanted`` (our import statement, the names it must bind) into
    ``edit``; returns each rendered import, as the report lists them."""
    run = [
        s
        for s in t_tree.body
        if isinstance(s, (ast.Import, ast.ImportFrom)) and s.end_lineno <= run_end
    ]
    added = []
    for stmt, names in wanted:
        text = render(stmt, names)
        added.append(text.rstrip("\n"))
        host = None
        if isinstance(stmt, ast.ImportFrom):
            host = next(
                (
                    s
                    for s in run
                    if isinstance(s, ast.ImportFrom)
                    and (s.module, s.level) == (stmt.module, stmt.level)
                    and _one_name_per_line(s, t_lines)
                ),
                None,
            )
        if host is not None:
            first = t_lines[host.names[0].lineno - 1]
            indent = first[: len(first) - len(first.lstrip())]
            for alias in sorted(
                (a for a in stmt.names if (a.asname or a.name) in names),
                key=lambda a: _isort_key(a.name),
            ):
                later = [
                    a for a in host.names if _isort_key(a.name) > _isort_key(alias.name)
                ]
                at = later[0].lineno - 1 if later else host.end_lineno - 1
                spelled = alias.name + (f" as {alias.asname}" if alias.asname else "")
                edit.insert(at, [f"{indent}{spelled},{nl}"])
            continue
        same = [s.end_lineno for s in run if _root(s) == _root(stmt)]
        at = max(same) if same else run_end
        edit.insert(at, [line + nl for line in text.splitlines()])
    return added
