# SPDX-License-Identifier: Apache-2.0
"""Method-level splice of our class into an upstream module's text (``export``).

Pure text/AST work, no file or git access: ``splice_class`` returns the new
text and what the merge did; its docstring states the invariants.
"""

from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass, field

from .common import ToolError
from .imports import place_imports
from .symbols import (
    _DEF_TYPES,
    Symbol,
    _canonical,
    _comment_start,
    _first_line,
    _is_docstring,
    find_symbol,
    fingerprint,
    locate,
    parse_source,
    split_lines,
)

_MAX_LINE = 88


################################################################################
# export: method-level splice into an upstream file
################################################################################
def _member_names(stmt: ast.stmt) -> tuple[str, ...]:
    """Names a class-body statement defines; () for docstrings and the like."""
    if isinstance(stmt, _DEF_TYPES):
        return (stmt.name,)
    if isinstance(stmt, ast.Assign):
        return tuple(t.id for t in stmt.targets if isinstance(t, ast.Name))
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return (stmt.target.id,)
    return ()


@dataclass
class _Member:
    names: tuple[str, ...]
    node: ast.stmt
    start: int  # first line, leading comments included (1-based)
    last: int


def _members(cls: ast.ClassDef, lines: list[str]) -> list[_Member]:
    members, floor = [], cls.lineno
    for stmt in cls.body:
        start = _comment_start(lines, _first_line(stmt), floor)
        members.append(_Member(_member_names(stmt), stmt, start, stmt.end_lineno))
        floor = stmt.end_lineno
    return members


def _reindent(lines: list[str], old: int, new: int) -> list[str]:
    """Move lines indented by at least ``old`` columns to ``new``.

    Lines indented less (continuation text of a multi-line string) and blank
    lines are kept as they are, so string values never change.
    """
    if old == new:
        return lines
    out = []
    for line in lines:
        if line.strip() and (old == 0 or line[:old].isspace()):
            out.append(" " * new + line[old:])
        else:
            out.append(line)
    return out


def _with_newlines(lines: list[str], nl: str) -> list[str]:
    return [re.sub(r"(\r\n|\r|\n)\Z", nl, line) for line in lines]


def _bound_names(stmt: ast.stmt) -> set[str]:
    """Names a module-level statement binds in the module namespace."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, _DEF_TYPES):
            names.add(node.name)
            for sub in node.decorator_list:
                visit(sub)
            return
        if isinstance(
            node,
            (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp),
        ):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(_alias_binding(a) for a in node.names if a.name != "*")
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        if isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return names


def _alias_binding(alias: ast.alias) -> str:
    return alias.asname or alias.name.split(".")[0]


def _referenced(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bindings(tree: ast.Module, skip: ast.stmt | None = None) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for index, stmt in enumerate(tree.body):
        if stmt is not skip:
            for name in _bound_names(stmt):
                out.setdefault(name, []).append(index)
    return out


def _binding_signature(tree: ast.Module, indexes: list[int], name: str) -> tuple:
    """What ``name`` is bound to, comparable across two modules."""
    sig = []
    for index in indexes:
        stmt = tree.body[index]
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if _alias_binding(alias) == name:
                    module = getattr(stmt, "module", None)
                    sig.append(
                        ("import", getattr(stmt, "level", 0), module, alias.name)
                    )
        else:
            sig.append(("stmt", fingerprint(stmt)))
    return tuple(sig)


def _render_import(stmt: ast.Import | ast.ImportFrom, names: set[str]) -> str:
    """``stmt`` reduced to the aliases binding ``names``, as source."""
    aliases = [a for a in stmt.names if _alias_binding(a) in names]
    parts = [a.name + (f" as {a.asname}" if a.asname else "") for a in aliases]
    if isinstance(stmt, ast.Import):
        return "".join(f"import {p}\n" for p in parts)
    module = "." * stmt.level + (stmt.module or "")
    line = f"from {module} import {', '.join(parts)}\n"
    if len(line) <= _MAX_LINE + 1:
        return line
    body = "".join(f"    {p},\n" for p in parts)
    return f"from {module} import (\n{body})\n"


def _describe(stmt: ast.stmt) -> str:
    kind = {
        ast.FunctionDef: "def",
        ast.AsyncFunctionDef: "async def",
        ast.ClassDef: "class",
        ast.Assign: "assignment",
        ast.AnnAssign: "assignment",
        ast.If: "if-block",
        ast.Try: "try-block",
    }.get(type(stmt), type(stmt).__name__)
    names = ", ".join(sorted(_bound_names(stmt))) or "-"
    return f"{kind} {names} (lines {_first_line(stmt)}-{stmt.end_lineno} of ours)"


@dataclass
class Splice:
    """The spliced file text and what the merge did."""

    text: str
    replaced: list[str] = field(default_factory=list)
    replaced_differing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    header_changed: bool = False
    imports_added: list[str] = field(default_factory=list)
    helpers_added: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


class _Edit:
    """Insertions into a line list, applied in one pass (positions are 0-based)."""

    def __init__(self) -> None:
        self.inserts: dict[int, list[str]] = {}

    def insert(self, before: int, text_lines: list[str]) -> None:
        self.inserts.setdefault(before, []).extend(text_lines)

    def apply(self, lines: list[str]) -> list[str]:
        out = []
        for index in range(len(lines) + 1):
            out += self.inserts.get(index, [])
            if index < len(lines):
                out.append(lines[index])
        return out


def _newline_of(lines: list[str]) -> str:
    for line in lines:
        for nl in ("\r\n", "\n", "\r"):
            if line.endswith(nl):
                return nl
    return "\n"


def _merged_class(ours: Symbol, target: Symbol, nl: str, splice: Splice) -> list[str]:
    """Our class's lines with the members only the target defines inserted.

    Each kept member goes right after the member it follows in the target if
    we define that one too, else before our first method (or at the end), so
    the target's order is kept where it can be. Fills splice's member lists.
    """
    o_lines = _with_newlines(ours.lines, nl)
    o_members = _members(ours.node, o_lines)
    t_members = _members(target.node, target.lines)
    ours_by_name = {n: m for m in o_members for n in m.names}
    t_prints = {n: fingerprint(m.node) for m in t_members for n in m.names}
    indent = ours.node.body[0].col_offset
    functions = [m for m in o_members if isinstance(m.node, _DEF_TYPES)]
    base = ours.first - 1  # positions below are 0-based indexes into o_lines
    anchor = None  # None: no shared member seen yet
    edit = _Edit()
    for member in t_members:
        shared = [ours_by_name[n] for n in member.names if n in ours_by_name]
        if shared:
            anchor = max(m.last for m in shared)
            continue
        if not member.names:
            continue  # target's docstring, pass, bare expressions: ours win
        body = target.lines[member.start - 1 : member.last]
        body = _with_newlines(_reindent(body, member.node.col_offset, indent), nl)
        if not body[-1].endswith(nl):
            body[-1] += nl
        splice.kept += member.names
        if anchor is not None:
            edit.insert(anchor - base, [nl] + body)
        elif functions:
            edit.insert(functions[0].start - 1 - base, body + [nl])
        else:
            edit.insert(ours.last - base, [nl] + body)
    for member in o_members:
        for name in member.names:
            if name not in t_prints:
                splice.added.append(name)
                continue
            splice.replaced.append(name)
            if t_prints[name] != fingerprint(member.node):
                splice.replaced_differing.append(name)
    merged = edit.apply(o_lines[base : ours.last])
    return _reindent(merged, ours.node.col_offset, target.node.col_offset)


def _header(node: ast.ClassDef) -> str:
    bare = copy.copy(node)
    bare.body = []
    return _canonical(bare)


def _import_run_end(tree: ast.Module) -> int:
    """Line after the module's leading docstring and import statements."""
    end = 0
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) or (
            end == 0 and _is_docstring(stmt)
        ):
            end = stmt.end_lineno
        else:
            break
    return end


def _needed_helpers(o_tree, o_top, t_tree, needs: set[str], splice: Splice):
    """Our module-level statements the class needs that the target lacks.

    Returns ``(import names by statement index, helper statement indexes)``:
    the transitive closure over our module of names referenced by the class
    (and by the test) that the target does not bind. Names bound by both are
    left to the target and listed as conflicts when the bindings differ.
    """
    ours_bound = _bindings(o_tree, skip=o_top)
    target_bound = _bindings(t_tree)
    queue = sorted(n for n in needs if n in ours_bound)
    seen: set[str] = set()
    imports: dict[int, set[str]] = {}
    helpers: set[int] = set()
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in target_bound:
            if _binding_signature(o_tree, ours_bound[name], name) != _binding_signature(
                t_tree, target_bound[name], name
            ):
                splice.conflicts.append(
                    f"{name}: bound differently in the target (target's kept)"
                )
            continue
        for index in ours_bound[name]:
            stmt = o_tree.body[index]
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                imports.setdefault(index, set()).add(name)
            elif index not in helpers:
                helpers.add(index)
                queue += sorted(
                    n for n in _referenced(stmt) if n in ours_bound and n not in seen
                )
    for index in sorted(helpers):
        rebound = sorted(_bound_names(o_tree.body[index]) & set(target_bound))
        if rebound:
            splice.conflicts.append(
                f"helper at line {o_tree.body[index].lineno} also rebinds "
                + ", ".join(rebound)
            )
    return imports, sorted(helpers)


def _helper_lines(o_tree, o_lines, helpers: list[int], nl: str) -> list[str]:
    """Our helper statements as source lines, ready to insert before the class.

    Statements adjacent in our module keep the text between them (comments,
    blank lines); separate runs get two blank lines, as black wants between
    top-level definitions. Each run carries the comments right above it.
    """
    out: list[str] = []
    prev = None
    for index in helpers:
        stmt = o_tree.body[index]
        if prev is not None and index == prev + 1:
            start = o_tree.body[prev].end_lineno + 1
        else:
            if out:
                out += [nl, nl]
            prev_end = o_tree.body[index - 1].end_lineno if index else 0
            start = _comment_start(o_lines, _first_line(stmt), prev_end)
        out += o_lines[start - 1 : stmt.end_lineno]
        prev = index
    return out + [nl, nl] if out else []


def _symbol_in(tree: ast.Module, text: str, name: str, label: str) -> Symbol | None:
    node, top = find_symbol(tree, name, label)
    return None if node is None else Symbol(node, top, split_lines(text))


def splice_class(
    target_text: str,
    ours_text: str,
    name: str,
    target_name: str | None = None,
    extra_needs=(),
) -> Splice:
    """Splice our class ``name`` into ``target_text`` at method level.

    Invariants: the target's lines outside its class are kept byte for byte
    (new imports and helpers are only inserted between them); methods we
    define replace the target's; members only the target has are kept; the
    result parses.
    """
    target_name = target_name or name
    # one parse per file: ours.top must be a statement of o_tree (identity)
    t_tree, o_tree = parse_source(target_text, "target"), parse_source(
        ours_text, "ours"
    )
    target = _symbol_in(t_tree, target_text, target_name, "target")
    ours = _symbol_in(o_tree, ours_text, name, "ours")
    if target is None:
        raise ToolError(f"the target has no {target_name} to merge into")
    if ours is None:
        raise ToolError(f"our file has no {name}")
    if not isinstance(target.node, ast.ClassDef) or not isinstance(
        ours.node, ast.ClassDef
    ):
        raise ToolError(f"{name}: export merges classes only")
    nl = _newline_of(target.lines)
    splice = Splice(text="")
    class_lines = _merged_class(ours, target, nl, splice)
    if not target.lines[target.last - 1].endswith(("\n", "\r")):
        class_lines[-1] = class_lines[-1].rstrip("\r\n")
    splice.header_changed = _header(ours.node) != _header(target.node)
    needs = _referenced(ours.node) | set(extra_needs)
    imports, helpers = _needed_helpers(o_tree, ours.top, t_tree, needs, splice)

    o_lines = _with_newlines(ours.lines, nl)
    helper_lines = _helper_lines(o_tree, o_lines, helpers, nl)
    splice.helpers_added = [_describe(o_tree.body[i]) for i in helpers]

    import_at = _import_run_end(t_tree)
    top_first = _first_line(target.top)
    prev = [s.end_lineno for s in t_tree.body if s.end_lineno < top_first]
    helpers_at = _comment_start(target.lines, top_first, max(prev, default=0)) - 1
    if not import_at <= helpers_at <= target.first - 1:
        raise ToolError("target layout not supported: the class precedes its imports")
    edit = _Edit()
    wanted = [(o_tree.body[i], names) for i, names in sorted(imports.items())]
    splice.imports_added = place_imports(
        t_tree, target.lines, import_at, wanted, nl, edit, _render_import
    )
    edit.insert(helpers_at, helper_lines)
    lines = target.lines[: target.first - 1] + ["\0CLASS"] + target.lines[target.last :]
    merged = edit.apply(lines)
    at = merged.index("\0CLASS")
    splice.text = "".join(merged[:at] + class_lines + merged[at + 1 :])
    _verify_splice(splice, target_name)
    return splice


def _verify_splice(splice: Splice, name: str) -> None:
    result = locate(splice.text, name, "export result")
    if result is None:
        raise ToolError(f"export result lost {name}")
    members = {n for m in result.node.body for n in _member_names(m)}
    missing = set(splice.kept) | set(splice.replaced) | set(splice.added)
    if missing - members:
        raise ToolError(f"export result lacks members {sorted(missing - members)}")
