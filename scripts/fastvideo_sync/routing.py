# SPDX-License-Identifier: Apache-2.0
"""Method- and function-level edits of an upstream module (``export``).

``prepend_preludes`` routes upstream's methods through our kernels: our
method's statements before its final ``return`` go to the top of upstream's
method, whose own body stays as the fallback. ``replace_functions`` swaps
upstream's top-level functions / ``Class.method`` for ours. ``outside_lines``
counts what a change did outside one class. Pure text/AST work.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field

from .common import ToolError
from .splice import _bound_names, _Edit, _newline_of, _referenced, _reindent
from .symbols import (
    _DEF_TYPES,
    _canonical,
    _comment_start,
    _first_line,
    _is_docstring,
    find_symbol,
    locate,
    parse_source,
    split_lines,
)


@dataclass
class Routing:
    """The edited text and what the edit did."""

    text: str
    routed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # upstream starts with ours
    replaced: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    needs: set[str] = field(default_factory=set)  # module names our code uses


def _method(tree: ast.Module, qualname: str, label: str):
    """``(class node, method node)`` for ``Class.method``; ToolError if absent."""
    cls_name, _, name = qualname.partition(".")
    cls, _ = find_symbol(tree, cls_name, label)
    if not isinstance(cls, ast.ClassDef):
        raise ToolError(f"{label}: no class {cls_name} (for {qualname})")
    hits = [s for s in cls.body if isinstance(s, _DEF_TYPES) and s.name == name]
    if len(hits) != 1:
        raise ToolError(f"{label}: {qualname} is defined {len(hits)} times")
    return cls, hits[0]


def _body(node) -> list[ast.stmt]:
    """The body without its docstring."""
    body = node.body
    return body[1:] if body and _is_docstring(body[0]) else body


def _prelude(method, lines: list[str], qualname: str) -> tuple[list[str], list]:
    """Our statements before the final ``return``, as lines, and their nodes."""
    body = _body(method)
    if not body or not isinstance(body[-1], ast.Return):
        raise ToolError(f"ours: {qualname} must end with a return statement")
    stmts = body[:-1]
    if not stmts:
        raise ToolError(f"ours: {qualname} has nothing before its final return")
    floor = method.body[0].end_lineno if body is not method.body else method.lineno
    start = _comment_start(lines, _first_line(stmts[0]), floor)
    # the comment above the final return explains the fallback: it stays ours
    end = _comment_start(lines, _first_line(body[-1]), stmts[-1].end_lineno) - 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start - 1 : end], stmts


def prepend_preludes(target_text: str, ours_text: str, methods) -> Routing:
    """Put our prelude of each ``Class.method`` at the top of upstream's method.

    Invariants: upstream's lines are kept byte for byte (only insertions after
    each method's ``def`` line(s) or docstring); a method whose body already
    starts with our prelude is left alone; the result parses.
    """
    t_tree = parse_source(target_text, "target")
    o_tree = parse_source(ours_text, "ours")
    t_lines, o_lines = split_lines(target_text), split_lines(ours_text)
    nl = _newline_of(t_lines)
    result = Routing(text=target_text)
    edit = _Edit()
    for qualname in methods:
        _, ours = _method(o_tree, qualname, "ours")
        _, theirs = _method(t_tree, qualname, "target")
        prelude, stmts = _prelude(ours, o_lines, qualname)
        result.needs |= set().union(*(_referenced(s) for s in stmts))
        t_body = _body(theirs)
        head = [_canonical(s) for s in t_body[: len(stmts)]]
        if head == [_canonical(s) for s in stmts]:
            result.already.append(qualname)
            continue
        if theirs.body is not t_body:  # after the docstring
            at = theirs.body[0].end_lineno
        else:
            at = _comment_start(t_lines, _first_line(t_body[0]), theirs.lineno) - 1
        indent = theirs.body[0].col_offset
        moved = _reindent(prelude, ours.body[0].col_offset, indent)
        edit.insert(at, [line.rstrip("\r\n") + nl for line in moved])
        result.routed.append(qualname)
    result.text = "".join(edit.apply(t_lines))
    parse_source(result.text, "routing result")
    return result


def _our_functions(o_tree: ast.Module, symbols) -> list[str]:
    """What ``functions`` replaces: ``symbols``, else every def of our file."""
    if symbols:
        return list(symbols)
    names = []
    for stmt in o_tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(stmt.name)
        elif isinstance(stmt, ast.ClassDef):
            names += [
                f"{stmt.name}.{s.name}"
                for s in stmt.body
                if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
            ]
    if not names:
        raise ToolError("ours: no functions or methods to export")
    return names


def _free_names(func) -> set[str]:
    """Names ``func`` reads that it does not bind itself (an approximation that
    ignores scoping inside it: a name bound anywhere in it counts as local)."""
    bound = set()
    for node in ast.walk(func):
        if isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, _DEF_TYPES) and node is not func:
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return _referenced(func) - bound


def _function(tree: ast.Module, name: str, label: str):
    if "." in name:
        return _method(tree, name, label)[1]
    node, top = find_symbol(tree, name, label)
    if node is None:
        raise ToolError(f"{label}: no function {name}")
    if node is not top or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise ToolError(f"{label}: {name} is not a top-level function")
    return node


def replace_functions(target_text: str, ours_text: str, symbols=()) -> Routing:
    """Replace upstream's functions / ``Class.method`` by ours, nothing else.

    Every symbol must exist on both sides: our file is a subset of upstream's.
    Upstream's comments above each definition are kept; a changed signature is
    reported as a conflict (callers upstream may need a look), not refused.
    """
    t_tree = parse_source(target_text, "target")
    o_tree = parse_source(ours_text, "ours")
    t_lines, o_lines = split_lines(target_text), split_lines(ours_text)
    nl = _newline_of(t_lines)
    result = Routing(text=target_text)
    spans = []
    for name in _our_functions(o_tree, symbols):
        ours, theirs = _function(o_tree, name, "ours"), _function(
            t_tree, name, "target"
        )
        if _canonical(ours.args) != _canonical(theirs.args):
            result.conflicts.append(f"{name}: signature differs from upstream's")
        result.needs |= _free_names(ours)
        new = o_lines[_first_line(ours) - 1 : ours.end_lineno]
        new = _reindent(new, ours.col_offset, theirs.col_offset)
        new = [line.rstrip("\r\n") + nl for line in new]
        if not t_lines[theirs.end_lineno - 1].endswith(("\n", "\r")):
            new[-1] = new[-1].rstrip("\r\n")
        spans.append((_first_line(theirs), theirs.end_lineno, new))
        result.replaced.append(name)
    for first, last, new in sorted(spans, reverse=True):
        t_lines[first - 1 : last] = new
    result.text = "".join(t_lines)
    parse_source(result.text, "functions result")
    return result


def missing_names(text: str, names: set[str]) -> set[str]:
    """Of ``names``, those the module in ``text`` does not bind (builtins aside)."""
    import builtins

    tree = parse_source(text, "target")
    bound = set().union(*(_bound_names(s) for s in tree.body))
    return {n for n in names if n not in bound and not hasattr(builtins, n)}


def outside_lines(old: str, new: str, name: str) -> int:
    """Lines added or removed in ``old`` -> ``new`` outside the class ``name``."""

    def masked(text: str) -> list[str]:
        lines = split_lines(text)
        symbol = locate(text, name, "outside_lines")
        if symbol is None:
            return lines
        return lines[: symbol.first - 1] + ["\0CLASS\n"] + lines[symbol.last :]

    diff = difflib.unified_diff(masked(old), masked(new), n=0)
    return sum(
        1
        for line in diff
        if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))
    )


def add_imports(target_text: str, ours_text: str, names: set[str]):
    """Import into ``target_text`` those of ``names`` it lacks, as ours does.

    Returns ``(text, import lines added, names neither side imports)``; the
    imports go after upstream's leading import run, as lines of their own.
    """
    from .splice import _import_run_end, _render_import, _with_newlines

    missing = missing_names(target_text, names)
    o_tree, t_tree = parse_source(ours_text, "ours"), parse_source(
        target_text, "target"
    )
    rendered = []
    for stmt in o_tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            wanted = _bound_names(stmt) & missing
            if wanted:
                rendered.append(_render_import(stmt, wanted))
                missing -= wanted
    if not rendered:
        return target_text, [], missing
    lines = split_lines(target_text)
    edit = _Edit()
    nl = _newline_of(lines)
    edit.insert(
        _import_run_end(t_tree), _with_newlines(split_lines("".join(rendered)), nl)
    )
    return "".join(edit.apply(lines)), [r.rstrip("\n") for r in rendered], missing
