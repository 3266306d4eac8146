# SPDX-License-Identifier: Apache-2.0
"""Additions-only edits of upstream files we extend in place (``export``).

``extend_defs`` (a module with ``__all__``), ``extend_facade`` (the kernels
facade's ``_SPECS`` / ``_EXPORTS``) and ``extend_tables`` (a markdown file's
tables, by heading) only insert lines: ``additions_only`` checks that, and a
name upstream already has is reported as a conflict, never duplicated.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field

from .common import ToolError
from .splice import (
    _bound_names,
    _Edit,
    _import_run_end,
    _newline_of,
    _referenced,
    _reindent,
    _render_import,
    _with_newlines,
)
from .symbols import (
    _comment_start,
    _first_line,
    _is_docstring,
    parse_source,
    split_lines,
)


@dataclass
class InPlace:
    """The extended text and what was added or left alone."""

    text: str
    added: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def additions_only(old: str, new: str, label: str) -> int:
    """Number of added lines; ToolError if ``new`` changes or drops a line."""
    matcher = difflib.SequenceMatcher(
        None, split_lines(old), split_lines(new), autojunk=False
    )
    added = 0
    for tag, i1, _i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            raise ToolError(f"{label}: the edit would change upstream line {i1 + 1}")
        if tag == "insert":
            added += j2 - j1
    return added


def _assigned(tree: ast.Module, name: str):
    """The top-level ``name = ...`` / ``name: T = ...`` statement, or None."""
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else []
        if isinstance(stmt, ast.AnnAssign):
            targets = [stmt.target]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return stmt
    return None


def _own_line_items(node, lines: list[str]) -> bool:
    """One element per line and the closing bracket on a line of its own."""
    items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else node.keys
    if not items or any(item is None for item in items):
        return False
    starts = [item.lineno for item in items]
    return (
        len(set(starts)) == len(starts)
        and starts[0] > node.lineno
        and lines[node.end_lineno - 1].strip()[:1] in (")", "]", "}")
        and lines[items[-1].end_lineno - 1].rstrip().endswith(",")
    )


################################################################################
# defs: our top-level definitions before upstream's __all__
################################################################################
def extend_defs(target_text: str, ours_text: str) -> InPlace:
    t_tree, o_tree = parse_source(target_text, "target"), parse_source(
        ours_text, "ours"
    )
    t_lines, o_lines = split_lines(target_text), split_lines(ours_text)
    nl = _newline_of(t_lines)
    result = InPlace(text=target_text)
    t_bound = set().union(*(_bound_names(s) for s in t_tree.body))
    o_imports = [s for s in o_tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    chunks, names, prev_end, needed = [], [], 0, set()
    for stmt in o_tree.body:
        skip = (
            isinstance(stmt, (ast.Import, ast.ImportFrom))
            or (prev_end == 0 and _is_docstring(stmt))
            or stmt is _assigned(o_tree, "__all__")
        )
        start = _comment_start(o_lines, _first_line(stmt), prev_end)
        prev_end = stmt.end_lineno
        if skip:
            continue
        clash = sorted(_bound_names(stmt) & t_bound)
        if clash:
            result.conflicts.append(f"{', '.join(clash)}: upstream has it (kept)")
            continue
        chunks.append(_with_newlines(o_lines[start - 1 : stmt.end_lineno], nl))
        names += sorted(_bound_names(stmt))
        needed |= _referenced(stmt)
    imports = []
    for stmt in o_imports:
        wanted = (_bound_names(stmt) & needed) - t_bound
        if wanted:
            imports.append(_render_import(stmt, wanted))
    edit = _Edit()
    edit.insert(
        _import_run_end(t_tree), _with_newlines(split_lines("".join(imports)), nl)
    )
    block = []
    for chunk in chunks:
        block += chunk + [nl, nl]
    t_all = _assigned(t_tree, "__all__")
    o_all = _assigned(o_tree, "__all__")
    public = names
    if o_all is not None:
        public = [e.value for e in o_all.value.elts if isinstance(e, ast.Constant)]
    if t_all is None:
        edit.insert(len(t_lines), [nl, nl] + block[:-2] if block else [])
    else:
        at = _comment_start(t_lines, _first_line(t_all), 0) - 1
        edit.insert(at, block)
        _extend_all(t_all, t_lines, [n for n in public if n in names], nl, edit, result)
    result.added = names
    result.text = "".join(edit.apply(t_lines))
    parse_source(result.text, "defs result")
    return result


def _extend_all(node, lines, names, nl, edit: _Edit, result: InPlace) -> None:
    value = node.value
    if not isinstance(value, (ast.List, ast.Tuple)):
        raise ToolError("target: __all__ is not a list or tuple literal")
    have = [e.value for e in value.elts if isinstance(e, ast.Constant)]
    new = [n for n in names if n not in have]
    if not new:
        return
    if _own_line_items(value, lines):
        first = lines[value.elts[0].lineno - 1]
        indent = first[: len(first) - len(first.lstrip())]
        quote = first.lstrip()[0]
        ordered = have == sorted(have)
        for name in sorted(new):
            before = next((e for e in value.elts if ordered and e.value > name), None)
            at = before.lineno - 1 if before is not None else value.end_lineno - 1
            edit.insert(at, [f"{indent}{quote}{name}{quote},{nl}"])
    else:  # a one-line __all__: extending it in place would rewrite that line
        listed = ", ".join(f'"{n}"' for n in sorted(new))
        edit.insert(node.end_lineno, [f"__all__ += [{listed}]{nl}"])


################################################################################
# facade: _SPECS tuples and _EXPORTS entries
################################################################################
def _spec_key(elt: ast.expr, text: str) -> str:
    if isinstance(elt, ast.Tuple) and len(elt.elts) >= 2:
        parts = (ast.get_source_segment(text, e) or "" for e in elt.elts[:2])
        return " ".join(p.strip() for p in parts)
    return ast.get_source_segment(text, elt) or ""


def _container(tree: ast.Module, name: str, kind, label: str):
    stmt = _assigned(tree, name)
    if stmt is None or not isinstance(stmt.value, kind):
        raise ToolError(f"{label}: no {name} = {kind.__name__.lower()} literal")
    return stmt.value


def extend_facade(
    target_text: str, ours_text: str, specs: str, exports: str, after_comment: str
) -> InPlace:
    """Our ``specs`` elements before the closing ``)`` of upstream's, and our
    ``exports`` entries after upstream's ``after_comment`` line (else at the
    end of its dict). Keyed by (op, backend) and by exported name."""
    t_tree, o_tree = parse_source(target_text, "target"), parse_source(
        ours_text, "ours"
    )
    t_lines, o_lines = split_lines(target_text), split_lines(ours_text)
    nl = _newline_of(t_lines)
    result = InPlace(text=target_text)
    t_bound = set().union(*(_bound_names(s) for s in t_tree.body))
    edit = _Edit()

    t_specs = _container(t_tree, specs, (ast.Tuple, ast.List), "target")
    o_specs = _container(o_tree, specs, (ast.Tuple, ast.List), "ours")
    if not _own_line_items(t_specs, t_lines):
        raise ToolError(f"target: {specs} is not one element per line, trailing comma")
    have = {_spec_key(e, target_text) for e in t_specs.elts}
    indent = t_specs.elts[0].col_offset
    for elt in o_specs.elts:
        key = _spec_key(elt, ours_text)
        if key in have:
            result.conflicts.append(f"{specs} {key}: upstream has it (kept)")
            continue
        unbound = sorted(_referenced(elt) - t_bound)
        if unbound:
            raise ToolError(f"{specs} {key} uses {', '.join(unbound)}: not in upstream")
        body = _reindent(
            o_lines[elt.lineno - 1 : elt.end_lineno], elt.col_offset, indent
        )
        body = [line.rstrip("\r\n") + nl for line in body]
        if not body[-1].rstrip().endswith(","):
            body[-1] = body[-1].rstrip("\r\n") + "," + nl
        edit.insert(t_specs.end_lineno - 1, body)
        result.added.append(f"{specs} {key}")

    t_exports = _container(t_tree, exports, ast.Dict, "target")
    o_exports = _container(o_tree, exports, ast.Dict, "ours")
    if t_lines[t_exports.end_lineno - 1].strip()[:1] != "}":
        raise ToolError(f"target: {exports} does not close on a line of its own")
    t_map = {
        k.value: ast.get_source_segment(target_text, v)
        for k, v in zip(t_exports.keys, t_exports.values)
        if isinstance(k, ast.Constant)
    }
    at = t_exports.end_lineno - 1
    for line_no in range(t_exports.lineno, t_exports.end_lineno):
        if after_comment and t_lines[line_no].strip().startswith(after_comment):
            at = line_no + 1
            break
    indent = " " * (t_exports.keys[0].col_offset if t_exports.keys else 4)
    entries = []
    for key, value in zip(o_exports.keys, o_exports.values):
        if not isinstance(key, ast.Constant):
            raise ToolError(f"ours: {exports} has a non-literal key")
        value_src = ast.get_source_segment(ours_text, value)
        if key.value in t_map:
            same = "same" if t_map[key.value] == value_src else t_map[key.value]
            result.conflicts.append(f"{exports} {key.value}: upstream has it ({same})")
            continue
        key_src = ast.get_source_segment(ours_text, key)
        entries.append(f"{indent}{key_src}: {value_src},{nl}")
        result.added.append(f"{exports} {key.value}")
    edit.insert(at, entries)
    result.text = "".join(edit.apply(t_lines))
    parse_source(result.text, "facade result")
    return result


################################################################################
# tables: markdown rows by heading
################################################################################
_HEADING_RE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")


def _tables(lines: list[str]) -> dict[str, tuple[int, int, int]]:
    """heading -> (heading index, first table line, end): 0-based, end exclusive,
    the first run of ``|`` lines below the heading; start == end without one.
    Lines inside code fences are neither headings nor rows."""
    out: dict[str, list] = {}
    fenced, current = False, None
    for index, line in enumerate(lines):
        text = line.rstrip("\r\n")
        if text.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        if _HEADING_RE.match(text):
            current = " ".join(text.split())
            out[current] = [index, index + 1, index + 1]
            continue
        if current is None or not text.lstrip().startswith("|"):
            continue
        entry = out[current]
        if entry[1] == entry[2]:  # no row yet: the table starts here
            entry[1], entry[2] = index, index + 1
        elif entry[2] == index:  # the same table goes on
            entry[2] = index + 1
    return {heading: tuple(entry) for heading, entry in out.items()}


def _first_cell(row: str) -> str:
    cells = row.strip().strip("|").split("|")
    return cells[0].strip() if cells else ""


def extend_tables(target_text: str, ours_text: str) -> InPlace:
    """Our table rows after the last row of upstream's table of the same
    heading; a heading upstream lacks gets our whole section at the end."""
    t_lines, o_lines = split_lines(target_text), split_lines(ours_text)
    nl = _newline_of(t_lines)
    result = InPlace(text=target_text)
    t_tables, edit, tail = _tables(t_lines), _Edit(), []
    for heading, (head, start, end) in _tables(o_lines).items():
        if end - start < 3:
            continue  # no rows below the header and separator
        rows = [line.rstrip("\r\n") + nl for line in o_lines[start + 2 : end]]
        where = t_tables.get(heading)
        if where is None or where[2] - where[1] < 2:
            tail += [nl, o_lines[head].rstrip("\r\n") + nl, nl]
            tail += [line.rstrip("\r\n") + nl for line in o_lines[start:end]]
            result.added.append(f"{heading} (new section, {len(rows)} rows)")
            continue
        have = {_first_cell(r) for r in t_lines[where[1] + 2 : where[2]]}
        fresh = []
        for row in rows:
            if _first_cell(row) in have:
                result.conflicts.append(f"{heading}: upstream has {_first_cell(row)}")
            else:
                fresh.append(row)
        edit.insert(where[2], fresh)
        result.added += [f"{heading}: {_first_cell(r)}" for r in fresh]
    if tail and t_lines and not t_lines[-1].endswith(("\n", "\r")):
        raise ToolError("target: the markdown file does not end with a newline")
    edit.insert(len(t_lines), tail)
    result.text = "".join(edit.apply(t_lines))
    return result
