# SPDX-License-Identifier: Apache-2.0
"""AST fingerprints and symbol location in Python source.

``fingerprint`` is the ``ast1`` scheme recorded in the manifest; ``locate``
finds the one module-scope class/function of a name and the lines it spans.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import re
from dataclasses import dataclass

from .common import ToolError

FINGERPRINT_SCHEME = "ast1"
_FINGERPRINT_HEX = 16
_FINGERPRINT_RE = re.compile(r"^ast1:[0-9a-f]{16}$")


################################################################################
# Fingerprints
################################################################################
# Fields that only carry formatting (``u"..."`` prefix, ``# type:`` comments).
_IGNORED_FIELDS = frozenset({"kind", "type_comment"})
_DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _without_docstrings(node: ast.AST) -> ast.AST:
    """A copy of ``node`` with every module/class/function docstring removed."""
    node = copy.deepcopy(node)
    for owner in ast.walk(node):
        if isinstance(owner, _DOC_OWNERS) and owner.body:
            if _is_docstring(owner.body[0]):
                owner.body = owner.body[1:]
    return node


def _canonical(value: object) -> str:
    """Deterministic dump of an AST.

    Unlike ``ast.dump`` it omits fields that are ``None`` or empty lists, so the
    text does not change when a Python release adds an optional field (3.12
    ``type_params``) or changes ``ast.dump`` defaults (3.13). Positions are
    never included.
    """
    if isinstance(value, ast.AST):
        parts = []
        for name in value._fields:
            if name in _IGNORED_FIELDS:
                continue
            item = getattr(value, name, None)
            if item is None or (isinstance(item, list) and not item):
                continue
            parts.append(f"{name}={_canonical(item)}")
        return f"{type(value).__name__}({','.join(parts)})"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(item) for item in value) + "]"
    return repr(value)


def fingerprint(node: ast.AST) -> str:
    """``ast1:`` + 16 hex of sha256 over the canonical docstring-free AST.

    Invariant: formatting (black, line breaks, quotes, parentheses, trailing
    commas), comments and docstrings never change it; any change to code,
    names, decorators, bases, defaults or annotations does.
    """
    dump = _canonical(_without_docstrings(node))
    digest = hashlib.sha256(dump.encode("utf-8")).hexdigest()
    return f"{FINGERPRINT_SCHEME}:{digest[:_FINGERPRINT_HEX]}"


################################################################################
# Source files and symbols
################################################################################
# ast counts lines on \n, \r\n and \r only; str.splitlines also splits on \f etc.
_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_DEF_TYPES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_TRY_TYPES = (ast.Try, getattr(ast, "TryStar", ast.Try))


def split_lines(text: str) -> list[str]:
    """Lines with their endings, numbered exactly as ``ast`` numbers them."""
    return _LINE_RE.findall(text)


def parse_source(text: str, label: str) -> ast.Module:
    try:
        return ast.parse(text, filename=label)
    except SyntaxError as exc:
        raise ToolError(
            f"{label}: cannot parse: {exc.msg} (line {exc.lineno})"
        ) from None
    except ValueError as exc:
        raise ToolError(f"{label}: cannot parse: {exc}") from None


def _nested_blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """Statement lists run at module level inside ``stmt`` (if/try/with)."""
    if isinstance(stmt, ast.If):
        return [stmt.body, stmt.orelse]
    if isinstance(stmt, _TRY_TYPES):
        handlers = [h.body for h in stmt.handlers]
        return [stmt.body, *handlers, stmt.orelse, stmt.finalbody]
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return [stmt.body]
    return []


def _module_defs(body: list[ast.stmt], top: ast.stmt | None = None):
    """Yield ``(definition, enclosing top-level statement)`` at module scope."""
    for stmt in body:
        owner = top or stmt
        if isinstance(stmt, _DEF_TYPES):
            yield stmt, owner
        for block in _nested_blocks(stmt):
            yield from _module_defs(block, owner)


def find_symbol(tree: ast.Module, name: str, label: str):
    """The one module-scope class/function ``name`` and its top-level statement.

    Returns ``(None, None)`` when absent; several definitions are an error
    because neither the fingerprint nor a splice could tell which one is meant.
    """
    hits = [(node, top) for node, top in _module_defs(tree.body) if node.name == name]
    if len(hits) > 1:
        lines = ", ".join(str(node.lineno) for node, _ in hits)
        raise ToolError(f"{label}: {name} is defined {len(hits)} times (lines {lines})")
    return hits[0] if hits else (None, None)


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])


def _comment_start(lines: list[str], first: int, floor: int) -> int:
    """First line of the comment-only lines directly above line ``first``.

    Line numbers are 1-based; the run never reaches line ``floor`` or above.
    """
    line = first
    while line - 1 > floor and lines[line - 2].strip().startswith("#"):
        line -= 1
    return line


@dataclass
class Symbol:
    """A located definition: its node and the source lines it spans."""

    node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
    top: ast.stmt
    lines: list[str]

    @property
    def first(self) -> int:
        return _first_line(self.node)

    @property
    def last(self) -> int:
        return self.node.end_lineno

    @property
    def source(self) -> str:
        return "".join(self.lines[self.first - 1 : self.last])

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.node)


def locate(text: str, name: str, label: str) -> Symbol | None:
    node, top = find_symbol(parse_source(text, label), name, label)
    return None if node is None else Symbol(node, top, split_lines(text))


def unified_diff(old: str, new: str, old_label: str, new_label: str) -> str:
    """A unified diff of two texts; empty when they are equal."""
    out = difflib.unified_diff(
        split_lines(old), split_lines(new), old_label, new_label, n=3
    )
    return "".join(_terminate(line) for line in out)


def _terminate(line: str) -> str:
    if line.endswith(("\n", "\r")):
        return line
    return line + "\n\\ No newline at end of file\n"
