# SPDX-License-Identifier: Apache-2.0
"""The manifest (``scripts/fastvideo_ports.toml``): load, validate, edit in place.

``update_manifest_text`` is the only writer: a textual edit of string values,
re-parsed and checked, never a re-serialization.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .common import _SHA_RE, ToolError, read_text, write_atomic
from .symbols import _FINGERPRINT_RE, split_lines

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the project supports it, this tool not
    sys.exit("error: sync_fastvideo_port.py needs Python 3.11+ (tomllib)")

MANIFEST_RELPATH = "scripts/fastvideo_ports.toml"
SCHEMA_VERSION = 1


_REQUIRED = {
    "name": str,
    "origin_repo": str,
    "pr": int,
    "origin_commit": str,
    "origin_path": str,
    "origin_symbol": str,
    "origin_fingerprint": str,
    "target_path": str,
    "target_symbol": str,
    "target_fingerprint": str,
    "upstream_path": str,
}
_OPTIONAL = {
    "upstream_repo": str,
    "upstream_symbol": str,
    "target_test_path": str,
    "upstream_test_path": str,
    "not_ported": list,
    "notes": str,
    "export": list,
    "export_max_outside_lines": int,
}
_PATH_KEYS = (
    "origin_path",
    "target_path",
    "upstream_path",
    "target_test_path",
    "upstream_test_path",
)


@dataclass
class Port:
    """One ``[[port]]`` entry; ``index`` is its position in the manifest."""

    index: int
    name: str
    origin_repo: str
    pr: int
    origin_commit: str
    origin_path: str
    origin_symbol: str
    origin_fingerprint: str
    target_path: str
    target_symbol: str
    target_fingerprint: str
    upstream_path: str
    upstream_repo: str = ""
    upstream_symbol: str = ""
    target_test_path: str = ""
    upstream_test_path: str = ""
    not_ported: list = field(default_factory=list)
    notes: str = ""
    export: list = field(default_factory=list)  # of ExportStep, manifest order
    export_max_outside_lines: int = 0  # 0: no limit

    @property
    def pr_ref(self) -> str:
        return f"refs/pull/{self.pr}/head"

    @property
    def upstream_name(self) -> str:
        return self.upstream_symbol or self.target_symbol


def _check_relpath(value: str, where: str) -> None:
    """Manifest paths are relative POSIX paths that cannot climb out (no ``..``)."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or "\\" in value or ".." in path.parts:
        raise ToolError(f"{where}: {value!r} must be a relative path without '..'")


def _validate_port(raw: object, index: int) -> Port:
    where = f"manifest [[port]] #{index + 1}"
    if not isinstance(raw, dict):
        raise ToolError(f"{where}: not a table")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ToolError(f"{where}: unknown keys {', '.join(unknown)}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in raw:
            if key in _REQUIRED:
                raise ToolError(f"{where}: missing key {key}")
            continue
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise ToolError(f"{where}: {key} must be a {kind.__name__}")
    for key in _PATH_KEYS:
        if raw.get(key):
            _check_relpath(raw[key], f"{where} {key}")
    for part in raw.get("not_ported", []):
        if not isinstance(part, dict) or not all(
            isinstance(part.get(k), str) for k in ("path", "reason")
        ):
            raise ToolError(f"{where}: each not_ported needs path and reason strings")
        # a key meant for [[port]] written below a [[port.not_ported]] lands here
        unknown = sorted(set(part) - {"path", "what", "reason"})
        if unknown:
            raise ToolError(
                f"{where}: not_ported has unknown keys {', '.join(unknown)}"
            )
    if not _SHA_RE.match(raw["origin_commit"]):
        raise ToolError(f"{where}: origin_commit must be a full 40-hex commit id")
    for key in ("origin_fingerprint", "target_fingerprint"):
        if raw[key] and not _FINGERPRINT_RE.match(raw[key]):
            raise ToolError(f"{where}: {key} {raw[key]!r} is not an ast1 fingerprint")
    if bool(raw.get("target_test_path")) != bool(raw.get("upstream_test_path")):
        raise ToolError(f"{where}: set both target_test_path and upstream_test_path")
    if raw.get("export_max_outside_lines", 0) < 0:
        raise ToolError(f"{where}: export_max_outside_lines must be >= 0")
    steps = [
        _validate_step(step, f"{where} [[port.export]] #{i + 1}")
        for i, step in enumerate(raw.get("export", []))
    ]
    return Port(index=index, **{**raw, "export": steps})


################################################################################
# [[port.export]]: what ``export`` writes besides the spliced class
################################################################################
# kind -> (required keys, optional keys); every kind also takes the _STEP_COMMON
# keys. The kinds (see docs/origin-sync.md, "export"):
#   copy       our files, verbatim (paths may be globs over our tree)
#   prelude    our method's statements before its final return, put at the top
#              of upstream's method (upstream's body stays as the fallback)
#   functions  upstream's top-level functions / Class.methods replaced by ours
#   defs       our top-level definitions appended before upstream's __all__,
#              our names added to it
#   facade     our _SPECS tuples and _EXPORTS entries added to upstream's
#   tables     our markdown table rows appended to upstream's tables, by heading
_STEP_KINDS = {
    "copy": ({"paths"}, {"replace"}),
    "prelude": ({"path", "methods"}, set()),
    "functions": ({"path"}, {"symbols"}),
    "defs": ({"path"}, set()),
    "facade": ({"path"}, {"specs", "exports", "after_comment"}),
    "tables": ({"path"}, set()),
}
_STEP_COMMON = {"kind", "upstream_path", "optional", "note"}
_STEP_TYPES = {
    "kind": str,
    "path": str,
    "upstream_path": str,
    "paths": list,
    "methods": list,
    "symbols": list,
    "replace": bool,
    "optional": bool,
    "specs": str,
    "exports": str,
    "after_comment": str,
    "note": str,
}


@dataclass
class ExportStep:
    """One ``[[port.export]]`` table; ``upstream_path`` defaults to ``path``."""

    kind: str
    where: str
    path: str = ""
    upstream_path: str = ""
    paths: list = field(default_factory=list)
    methods: list = field(default_factory=list)
    symbols: list = field(default_factory=list)
    replace: bool = False
    optional: bool = False  # skip the step when our file is absent
    specs: str = "_SPECS"
    exports: str = "_EXPORTS"
    after_comment: str = ""
    note: str = ""

    @property
    def dest(self) -> str:
        return self.upstream_path or self.path


def _validate_step(raw: object, where: str) -> ExportStep:
    if not isinstance(raw, dict):
        raise ToolError(f"{where}: not a table")
    kind = raw.get("kind")
    if kind not in _STEP_KINDS:
        raise ToolError(f"{where}: kind must be one of {', '.join(_STEP_KINDS)}")
    required, optional = _STEP_KINDS[kind]
    unknown = sorted(set(raw) - required - optional - _STEP_COMMON)
    if unknown:
        raise ToolError(f"{where}: unknown keys for kind {kind}: {', '.join(unknown)}")
    missing = sorted(required - set(raw))
    if missing:
        raise ToolError(f"{where}: kind {kind} needs {', '.join(missing)}")
    for key, value in raw.items():
        if not isinstance(value, _STEP_TYPES[key]):
            raise ToolError(f"{where}: {key} must be a {_STEP_TYPES[key].__name__}")
        if isinstance(value, list) and not all(
            isinstance(item, str) and item for item in value
        ):
            raise ToolError(f"{where}: {key} must be a list of non-empty strings")
    for key in ("path", "upstream_path"):
        if key in raw:
            _check_relpath(raw[key], f"{where} {key}")
    for pattern in raw.get("paths", []):
        _check_relpath(pattern, f"{where} paths")
    if kind == "copy" and not raw["paths"]:
        raise ToolError(f"{where}: paths is empty")
    if kind == "copy" and "upstream_path" in raw:
        raise ToolError(f"{where}: copy keeps our paths; upstream_path is not allowed")
    for name in raw.get("methods", []):
        if name.count(".") != 1:
            raise ToolError(f"{where}: methods take Class.method names, got {name!r}")
    for name in raw.get("symbols", []):
        if name.count(".") > 1:
            raise ToolError(f"{where}: symbols are name or Class.method, got {name!r}")
    return ExportStep(where=where, **raw)


def load_manifest(path: Path) -> list[Port]:
    try:
        data = tomllib.loads(read_text(path, str(path)))
    except tomllib.TOMLDecodeError as exc:
        raise ToolError(f"{path}: invalid TOML: {exc}") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ToolError(f"{path}: schema_version must be {SCHEMA_VERSION}")
    ports = [_validate_port(raw, i) for i, raw in enumerate(data.get("port", []))]
    if not ports:
        raise ToolError(f"{path}: no [[port]] entries")
    names = [p.name for p in ports]
    if len(set(names)) != len(names):
        raise ToolError(f"{path}: port names must be unique")
    return ports


def select_ports(ports: list[Port], name: str | None, one: bool) -> list[Port]:
    """The ports a command acts on; ``one`` commands need exactly one."""
    if name is not None:
        ports = [p for p in ports if p.name == name]
        if not ports:
            raise ToolError(f"no port named {name!r} in the manifest")
    if one and len(ports) != 1:
        raise ToolError("the manifest has several ports: pick one with --port NAME")
    return ports


_PORT_HEADER_RE = re.compile(r"^[ \t]*\[\[[ \t]*port[ \t]*\]\][ \t]*(?:#.*)?$")
_ANY_HEADER_RE = re.compile(
    r"^[ \t]*\[\[?[ \t]*[A-Za-z0-9_.\"' -]+\]\]?[ \t]*(?:#.*)?$"
)


def _key_line_re(key: str) -> re.Pattern:
    return re.compile(
        rf'^([ \t]*{re.escape(key)}[ \t]*=[ \t]*)"([^"\\\r\n]*)"([ \t]*(?:#[^\r\n]*)?)'
        r"(\r\n|\r|\n)?\Z"
    )


def update_manifest_text(text: str, index: int, values: dict[str, str]) -> str:
    """Replace the string values of ``values``' keys in ``[[port]]`` #index.

    Works on the text, never re-serializes: every other byte (comments, order,
    quoting, layout) is kept. The result is re-parsed and must equal the old
    document with exactly these values changed, or nothing is returned.
    """
    lines = split_lines(text)
    headers = [i for i, line in enumerate(lines) if _PORT_HEADER_RE.match(line)]
    if index >= len(headers):
        raise ToolError(f"manifest: cannot find the text of [[port]] #{index + 1}")
    start = headers[index]
    end = next(
        (i for i in range(start + 1, len(lines)) if _ANY_HEADER_RE.match(lines[i])),
        len(lines),
    )
    for key, value in values.items():
        if re.search(r'["\\\r\n]', value):
            raise ToolError(f"manifest: refusing to write {key} value {value!r}")
        pattern = _key_line_re(key)
        hits = [i for i in range(start + 1, end) if pattern.match(lines[i])]
        if len(hits) != 1:
            raise ToolError(
                f'manifest: need exactly one `{key} = "..."` line in [[port]] '
                f"#{index + 1}, found {len(hits)}"
            )
        match = pattern.match(lines[hits[0]])
        ending = match.group(4) or ""
        lines[hits[0]] = f'{match.group(1)}"{value}"{match.group(3)}{ending}'
    new_text = "".join(lines)
    _verify_update(text, new_text, index, values)
    return new_text


def _verify_update(old: str, new: str, index: int, values: dict[str, str]) -> None:
    expected = tomllib.loads(old)
    expected["port"][index].update(values)
    try:
        ok = tomllib.loads(new) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise ToolError("manifest: the textual edit changed more than intended")


def update_manifest(path: Path, port: Port, values: dict[str, str]) -> bool:
    """Write ``values`` into ``port``'s entry; False when nothing changes."""
    text = read_text(path, str(path))
    new_text = update_manifest_text(text, port.index, values)
    if new_text == text:
        return False
    write_atomic(path, new_text)
    return True
