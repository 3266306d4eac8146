# SPDX-License-Identifier: Apache-2.0
"""Keep code ported from FastVideo pull requests in sync with its origin.

The manifest (``scripts/fastvideo_ports.toml``) records, for each port, the
origin commit the code was taken from and AST fingerprints of the origin
symbol and of our copy. Subcommands (all take ``--json``):

  status   offline: our symbol exists and matches the fingerprint recorded for it
  check    origin symbol at the PR head (or --ref) and on the default branch
           against the recorded one; whether the PR has been merged
  diff     origin symbol (recorded commit or --ref) against our port
  bump     record a reviewed origin commit (--to REF), or our side (--ours)
  record   record our side's fingerprint after a reviewed local edit
  export   splice our class into an upstream SGLang checkout

Exit status: 0 in sync, 1 drift found, 2 error (one line on stderr).
Python standard library only (3.11+); origins are read with the ``git`` CLI.
See docs/origin-sync.md.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the project supports it, this tool not
    sys.exit("error: sync_fastvideo_port.py needs Python 3.11+ (tomllib)")

DEFAULT_REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST_RELPATH = "scripts/fastvideo_ports.toml"

OK, DRIFT, ERROR = 0, 1, 2
SCHEMA_VERSION = 1
FINGERPRINT_SCHEME = "ast1"
_FINGERPRINT_HEX = 16
_FINGERPRINT_RE = re.compile(r"^ast1:[0-9a-f]{16}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_GIT_TIMEOUT_S = 1800
_LS_REMOTE_TIMEOUT_S = 120
_MAX_LINE = 88


class ToolError(Exception):
    """A failure reported as one line on stderr, exit status 2."""


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


def read_text(path: Path, label: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{label}: not UTF-8") from None
    except OSError as exc:
        raise ToolError(f"{label}: {exc.strerror or exc}") from None


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


################################################################################
# Manifest
################################################################################
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
    if not _SHA_RE.match(raw["origin_commit"]):
        raise ToolError(f"{where}: origin_commit must be a full 40-hex commit id")
    for key in ("origin_fingerprint", "target_fingerprint"):
        if raw[key] and not _FINGERPRINT_RE.match(raw[key]):
            raise ToolError(f"{where}: {key} {raw[key]!r} is not an ast1 fingerprint")
    if bool(raw.get("target_test_path")) != bool(raw.get("upstream_test_path")):
        raise ToolError(f"{where}: set both target_test_path and upstream_test_path")
    return Port(index=index, **raw)


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


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, newlines as given) in one rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        else:  # mkstemp makes 0600; a new file gets the usual 0666 & ~umask
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def update_manifest(path: Path, port: Port, values: dict[str, str]) -> bool:
    """Write ``values`` into ``port``'s entry; False when nothing changes."""
    text = read_text(path, str(path))
    new_text = update_manifest_text(text, port.index, values)
    if new_text == text:
        return False
    write_atomic(path, new_text)
    return True


################################################################################
# Git
################################################################################
# Variables that would make git ignore -C / --git-dir and act on another repo.
_GIT_REPO_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
)


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_REPO_VARS}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def run_git(
    args: list[str], *, cwd=None, check=True, timeout=_GIT_TIMEOUT_S, raw=False
):
    """Run git; ``check`` turns a failure into a ToolError with git's last line."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=_git_env(),
            capture_output=True,
            text=not raw,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise ToolError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"git {args[0]} timed out after {timeout}s") from None
    if check and proc.returncode:
        err = proc.stderr.decode("utf-8", "replace") if raw else proc.stderr
        raise ToolError(f"git {args[0]} failed: {_last_line(err)}")
    return proc


class OriginRepo:
    """Read-only access to an origin's objects through its git directory."""

    def __init__(self, git_dir: Path, label: str):
        self.git_dir = git_dir
        self.label = label

    def git(self, *args: str, check: bool = True, raw: bool = False):
        return run_git(["--git-dir", str(self.git_dir), *args], check=check, raw=raw)

    def resolve(self, ref: str) -> str | None:
        """The commit ``ref`` names, or None."""
        if ref.startswith("-"):
            raise ToolError(f"invalid ref {ref!r}")
        proc = self.git(
            "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False
        )
        return proc.stdout.strip() or None if proc.returncode == 0 else None

    def read_file(self, commit: str, path: str) -> str | None:
        """``path`` at ``commit`` as text, or None when the file is absent."""
        spec = f"{commit}:{path}"
        if self.git("cat-file", "-e", spec, check=False).returncode:
            return None
        blob = self.git("cat-file", "blob", spec, raw=True).stdout
        try:
            return blob.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{path} at {commit[:12]}: not UTF-8") from None

    def symbol(self, commit: str, path: str, name: str) -> Symbol | None:
        text = self.read_file(commit, path)
        return None if text is None else locate(text, name, f"{path}@{commit[:12]}")

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        proc = self.git(
            "merge-base", "--is-ancestor", ancestor, descendant, check=False
        )
        if proc.returncode > 1:
            raise ToolError(f"git merge-base failed: {_last_line(proc.stderr)}")
        return proc.returncode == 0

    def _symbolic(self, ref: str) -> str | None:
        proc = self.git("symbolic-ref", "-q", ref, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def is_bare(self) -> bool:
        return self.git("rev-parse", "--is-bare-repository").stdout.strip() == "true"

    def default_branch(self, override: str | None = None) -> tuple[str, str] | None:
        """``(ref name, commit)`` of the origin's default branch, or None.

        Order: ``--default-branch``; ``refs/remotes/origin/HEAD`` (a clone);
        ``HEAD`` of a bare repo (a mirror, or our URL fetch); local then remote
        ``main`` / ``master``; finally ``HEAD``. A non-bare clone's ``HEAD`` is
        whatever is checked out, hence its late place.
        """
        if override:
            sha = self.resolve(override)
            if sha is None:
                raise ToolError(f"default branch {override!r} not found in origin")
            return override, sha
        candidates = [self._symbolic("refs/remotes/origin/HEAD")]
        if self.is_bare():
            candidates.append(self._symbolic("HEAD"))
        candidates += [
            "refs/heads/main",
            "refs/heads/master",
            "refs/remotes/origin/main",
            "refs/remotes/origin/master",
            self._symbolic("HEAD") or "HEAD",
        ]
        for ref in filter(None, candidates):
            sha = self.resolve(ref)
            if sha:
                return ref, sha
        return None

    def squash_merge(self, branch: str, pr: int) -> str | None:
        """A commit on ``branch`` whose subject ends in ``(#pr)`` (GitHub squash)."""
        proc = self.git("log", "--format=%H %s", "-F", f"--grep=(#{pr})", branch)
        tail = re.compile(rf"\(#{pr}\)\s*$")
        for line in proc.stdout.splitlines():
            sha, _, subject = line.partition(" ")
            if tail.search(subject):
                return sha
        return None

    def changed_paths(self, old: str, new: str, paths: list[str]) -> list[str]:
        if not paths:
            return []
        proc = self.git("diff", "--name-only", old, new, "--", *paths)
        return proc.stdout.split()


def open_local_origin(spec: str) -> OriginRepo:
    """A clone's root or a (bare) git directory; anything else is refused."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ToolError(f"origin {spec}: no such directory (a clone, git dir or URL)")
    real = path.resolve()
    proc = run_git(["rev-parse", "--absolute-git-dir"], cwd=real, check=False)
    if proc.returncode:
        raise ToolError(f"origin {spec}: not a git repository")
    git_dir = Path(proc.stdout.strip()).resolve()
    if git_dir != real:
        top = run_git(["rev-parse", "--show-toplevel"], cwd=real, check=False)
        if top.returncode or Path(top.stdout.strip()).resolve() != real:
            raise ToolError(f"origin {spec}: inside a git work tree but not its root")
    return OriginRepo(git_dir, spec)


_SCP_RE = re.compile(r"^[\w.-]+@[\w.-]+:")


def is_url(spec: str) -> bool:
    return "://" in spec or bool(_SCP_RE.match(spec))


def _remote_default_ref(url: str) -> str | None:
    proc = run_git(
        ["ls-remote", "--symref", url, "HEAD"],
        check=False,
        timeout=_LS_REMOTE_TIMEOUT_S,
    )
    if proc.returncode:
        raise ToolError(
            f"cannot reach origin {url} (offline?): {_last_line(proc.stderr)}"
        )
    for line in proc.stdout.splitlines():
        if line.startswith("ref: ") and line.endswith("\tHEAD"):
            return line[5:].split("\t")[0]
    return None


def _refspec(ref: str) -> str | None:
    """Refspec fetching ``ref`` under its own name; None for SHAs/expressions."""
    if _SHA_RE.match(ref) or not re.match(r"^[\w./-]+$", ref):
        return None
    full = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
    return f"+{full}:{full}"


def fetch_url(url: str, dest: Path, refs: list[str], commits: list[str]) -> OriginRepo:
    """Fetch the default branch, ``refs`` and ``commits`` of ``url`` into ``dest``.

    ``dest`` is a bare repo (created if needed) whose ``HEAD`` is pointed at the
    remote's default branch, so ``default_branch`` finds it. Unreachable
    remotes and missing refs are ToolErrors; commits are fetched best effort
    (servers may refuse unadvertised objects).
    """
    if not (dest / "HEAD").exists():
        run_git(["init", "--bare", "--quiet", str(dest)])
    repo = OriginRepo(dest, url)
    default = _remote_default_ref(url)
    specs = [_refspec(ref) for ref in ([default] if default else []) + refs]
    specs = list(dict.fromkeys(s for s in specs if s))
    proc = repo.git("fetch", "--quiet", "--no-tags", url, *specs, check=False)
    if proc.returncode:
        raise ToolError(
            f"fetching {', '.join(refs)} from {url} failed: {_last_line(proc.stderr)}"
        )
    if default:
        repo.git("symbolic-ref", "HEAD", default)
    for sha in commits:
        if repo.resolve(sha) is None:
            repo.git("fetch", "--quiet", "--no-tags", url, sha, check=False)
    return repo


class Origins:
    """Opens origins for ports; URL fetches go to ``cache_dir`` or a temp dir."""

    def __init__(self, stack: ExitStack, override: str | None, cache_dir: Path | None):
        self.stack = stack
        self.override = override
        self.cache_dir = cache_dir
        self._dirs: dict[str, Path] = {}

    def get(self, port: Port, extra_refs: tuple[str, ...] = ()) -> OriginRepo:
        spec = self.override or port.origin_repo
        if spec.startswith("-"):  # would reach git as an option
            raise ToolError(f"invalid origin {spec!r}")
        if not is_url(spec):
            return open_local_origin(spec)
        refs = [port.pr_ref] + [r for r in extra_refs if r]
        commits = [port.origin_commit] + [
            r for r in extra_refs if r and _SHA_RE.match(r)
        ]
        return fetch_url(spec, self._dir_for(spec), refs, commits)

    def _dir_for(self, url: str) -> Path:
        if url not in self._dirs:
            if self.cache_dir is not None:
                name = re.sub(r"[^A-Za-z0-9._-]+", "_", url).strip("_")[:100]
                path = self.cache_dir.expanduser().resolve() / f"{name}.git"
                path.mkdir(parents=True, exist_ok=True)
            else:
                path = Path(tempfile.mkdtemp(prefix="fastvideo-origin-"))
                self.stack.callback(shutil.rmtree, path, True)
            self._dirs[url] = path
        return self._dirs[url]


################################################################################
# status / record
################################################################################
def our_symbol(port: Port, repo_root: Path) -> tuple[Symbol | None, str]:
    """Our symbol and a state: ok, changed, unrecorded, missing-file/-symbol."""
    path = repo_root / port.target_path
    if not path.is_file():
        return None, "missing-file"
    sym = locate(
        read_text(path, port.target_path), port.target_symbol, port.target_path
    )
    if sym is None:
        return None, "missing-symbol"
    if not port.target_fingerprint:
        return sym, "unrecorded"
    return sym, "ok" if sym.fingerprint == port.target_fingerprint else "changed"


def status_port(port: Port, repo_root: Path) -> tuple[dict, int]:
    sym, state = our_symbol(port, repo_root)
    test_ok = not port.target_test_path or (repo_root / port.target_test_path).is_file()
    report = {
        "name": port.name,
        "origin": {
            "repo": port.origin_repo,
            "pr": port.pr,
            "commit": port.origin_commit,
            "path": port.origin_path,
            "symbol": port.origin_symbol,
            "fingerprint": port.origin_fingerprint,
        },
        "ours": {
            "path": port.target_path,
            "symbol": port.target_symbol,
            "state": state,
            "fingerprint": sym.fingerprint if sym else None,
            "recorded": port.target_fingerprint,
        },
        "upstream": {"repo": port.upstream_repo, "path": port.upstream_path},
        "test": {
            "path": port.target_test_path,
            "upstream_path": port.upstream_test_path,
            "present": test_ok,
        },
        "not_ported": port.not_ported,
    }
    drift = state != "ok" or not test_ok
    report["in_sync"] = not drift
    return report, DRIFT if drift else OK


def _status_text(report: dict) -> str:
    ours, origin = report["ours"], report["origin"]
    head = "ok" if report["in_sync"] else "DRIFT"
    lines = [f"{report['name']}: {head}"]
    lines.append(
        f"  ours      {ours['path']}::{ours['symbol']} {ours['fingerprint'] or '-'}"
        f" ({ours['state']}; recorded {ours['recorded'] or '-'})"
    )
    lines.append(
        f"  origin    {origin['repo']} pull {origin['pr']} @ {origin['commit'][:12]}"
        f" {origin['path']}::{origin['symbol']} {origin['fingerprint'] or '-'}"
    )
    lines.append(f"  upstream  {report['upstream']['path']}")
    test = report["test"]
    if test["path"]:
        present = "present" if test["present"] else "MISSING"
        lines.append(
            f"  test      {test['path']} ({present}) -> {test['upstream_path']}"
        )
    for part in report["not_ported"]:
        lines.append(f"  not ported: {part.get('path', '?')}")
    if ours["state"] in ("changed", "unrecorded"):
        lines.append("  -> review the edit, then: sync_fastvideo_port.py record")
    return "\n".join(lines)


def record_port(
    port: Port, repo_root: Path, manifest: Path, dry_run: bool
) -> tuple[dict, int]:
    sym, state = our_symbol(port, repo_root)
    if sym is None:
        raise ToolError(f"{port.name}: {port.target_symbol} not found ({state})")
    changed = sym.fingerprint != port.target_fingerprint
    written = changed and not dry_run
    if written:
        update_manifest(manifest, port, {"target_fingerprint": sym.fingerprint})
    report = {
        "name": port.name,
        "side": "ours",
        "old": {"fingerprint": port.target_fingerprint},
        "new": {"fingerprint": sym.fingerprint},
        "changed": changed,
        "written": written,
    }
    return report, OK


################################################################################
# check / diff / bump
################################################################################
def compare(recorded: Symbol, other: Symbol | None) -> str:
    """same: identical text; cosmetic: same fingerprint; changed; missing."""
    if other is None:
        return "missing"
    if other.source == recorded.source:
        return "same"
    return "cosmetic" if other.fingerprint == recorded.fingerprint else "changed"


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def recorded_origin(port: Port, repo: OriginRepo) -> Symbol:
    """The origin symbol at the recorded commit, which must match the manifest."""
    sha = repo.resolve(port.origin_commit)
    if sha is None:
        raise ToolError(
            f"{port.name}: recorded origin commit {_short(port.origin_commit)} is not "
            f"in origin {repo.label} (force-pushed away or not fetched)"
        )
    sym = repo.symbol(sha, port.origin_path, port.origin_symbol)
    if sym is None:
        raise ToolError(
            f"{port.name}: {port.origin_path}::{port.origin_symbol} not found at "
            f"recorded commit {_short(sha)}"
        )
    if sym.fingerprint != port.origin_fingerprint:
        raise ToolError(
            f"{port.name}: manifest origin_fingerprint "
            f"{port.origin_fingerprint or '-'} does not match {port.origin_symbol} "
            f"at {_short(sha)} ({sym.fingerprint}); fix it with bump --to the "
            "recorded commit"
        )
    return sym


def _side(repo: OriginRepo, port: Port, recorded: Symbol, ref: str, sha: str) -> dict:
    sym = repo.symbol(sha, port.origin_path, port.origin_symbol)
    state = compare(recorded, sym)
    label = f"{port.origin_path}::{port.origin_symbol}"
    diff = ""
    if sym is not None and state != "same":
        diff = unified_diff(
            recorded.source,
            sym.source,
            f"a/{label}@{_short(port.origin_commit)}",
            f"b/{label}@{_short(sha)} ({ref})",
        )
    return {
        "ref": ref,
        "commit": sha,
        "fingerprint": sym.fingerprint if sym else None,
        "state": state,
        "diff": diff,
    }


def _merge_state(repo: OriginRepo, port: Port, pr_sha, default) -> dict:
    if pr_sha is None or default is None:
        missing = port.pr_ref if pr_sha is None else "default branch"
        return {"merged": None, "how": None, "commit": None, "note": f"no {missing}"}
    if repo.is_ancestor(pr_sha, default[1]):
        return {"merged": True, "how": "ancestor", "commit": pr_sha}
    squash = repo.squash_merge(default[1], port.pr)
    if squash:
        return {"merged": True, "how": "squash", "commit": squash}
    return {"merged": False, "how": None, "commit": None}


def check_port(
    port: Port, repo: OriginRepo, ref: str | None, default_override
) -> tuple[dict, int]:
    """Compare the origin symbol now against the recorded one.

    The authoritative side is ``--ref`` when given; otherwise the PR head while
    the PR is open and the default branch once it is merged (a merged PR head
    is frozen, the default branch is where the code lives on). Drift means the
    authoritative side's symbol changed or vanished; the other side is
    reported for information only.
    """
    recorded = recorded_origin(port, repo)
    pr_sha = repo.resolve(port.pr_ref)
    ref_name = ref or port.pr_ref
    ref_sha = repo.resolve(ref_name)
    if ref_sha is None:
        hint = (
            ""
            if ref
            else f" (fetch it: git fetch origin {port.pr_ref}:{port.pr_ref}; or --ref)"
        )
        raise ToolError(
            f"{port.name}: {ref_name} not found in origin {repo.label}{hint}"
        )
    at_ref = _side(repo, port, recorded, ref_name, ref_sha)
    default = repo.default_branch(default_override)
    at_default = _side(repo, port, recorded, *default) if default else None
    if at_default is not None:
        # Tells "the PR never landed" from "the default branch moved on".
        parent = repo.resolve(f"{port.origin_commit}^")
        before = parent and repo.symbol(parent, port.origin_path, port.origin_symbol)
        at_default["equals_pre_pr"] = bool(
            before and before.fingerprint == at_default["fingerprint"]
        )
    merged = _merge_state(repo, port, pr_sha, default)
    authority = (
        "ref" if ref or not merged["merged"] or at_default is None else "default_branch"
    )
    judged = at_ref if authority == "ref" else at_default
    reasons = []
    if judged["state"] in ("changed", "missing"):
        verb = "changed" if judged["state"] == "changed" else "is gone"
        reasons.append(
            f"{port.origin_symbol} {verb} on {judged['ref']} "
            f"({_short(judged['commit'])}) since {_short(port.origin_commit)}"
        )
    not_ported = [p["path"] for p in port.not_ported if p.get("path")]
    report = {
        "name": port.name,
        "origin": repo.label,
        "recorded": {"commit": port.origin_commit, "fingerprint": recorded.fingerprint},
        "ref": at_ref,
        "default_branch": at_default,
        "merged": merged,
        "authority": authority,
        "not_ported_changed": repo.changed_paths(
            port.origin_commit, ref_sha, not_ported
        ),
        "drift": bool(reasons),
        "reasons": reasons,
    }
    return report, DRIFT if reasons else OK


def _side_text(title: str, side: dict | None, judged: bool) -> str:
    if side is None:
        return f"  {title:<9} (none found)"
    note = "" if judged else "  (informational)"
    if side.get("equals_pre_pr"):
        note += "  [= the symbol before the PR's first commit]"
    return (
        f"  {title:<9} {side['ref']} = {_short(side['commit'])}"
        f"  {side['fingerprint'] or '-'}  {side['state']}{note}"
    )


def _check_text(report: dict) -> str:
    lines = [f"{report['name']}: {'DRIFT' if report['drift'] else 'in sync'}"]
    lines.append(f"  origin    {report['origin']}")
    rec = report["recorded"]
    lines.append(f"  recorded  {_short(rec['commit'])}  {rec['fingerprint']}")
    by_ref = report["authority"] == "ref"
    lines.append(_side_text("ref", report["ref"], by_ref))
    lines.append(_side_text("default", report["default_branch"], not by_ref))
    merged = report["merged"]
    if merged["merged"] is None:
        lines.append(f"  merged    unknown ({merged['note']})")
    elif merged["merged"]:
        lines.append(f"  merged    yes ({merged['how']}: {_short(merged['commit'])})")
    else:
        lines.append(
            "  merged    no (PR head not on the default branch, no squash commit)"
        )
    if report["not_ported_changed"]:
        lines.append("  not-ported parts changed since recorded (informational): "
                     + ", ".join(report["not_ported_changed"]))  # fmt: skip
    lines += [f"  reason    {r}" for r in report["reasons"]]
    for side in (report["ref"], report["default_branch"]):
        if side and side["state"] == "changed" and side["diff"]:
            lines.append(side["diff"].rstrip("\n"))
    return "\n".join(lines)


def diff_port(
    port: Port, repo: OriginRepo, ref: str | None, repo_root: Path
) -> tuple[dict, int]:
    """Origin symbol (recorded commit, or ``ref``) against our port.

    Exit 1 when a shown side no longer matches its recorded fingerprint.
    """
    recorded = recorded_origin(port, repo)
    origin_sym, sha, drift = recorded, port.origin_commit, []
    if ref:
        sha = repo.resolve(ref)
        if sha is None:
            raise ToolError(f"{port.name}: {ref} not found in origin {repo.label}")
        origin_sym = repo.symbol(sha, port.origin_path, port.origin_symbol)
        if origin_sym is None:
            raise ToolError(f"{port.name}: {port.origin_symbol} not found at {ref}")
        if origin_sym.fingerprint != port.origin_fingerprint:
            drift.append(f"origin {port.origin_symbol} at {ref} differs from recorded")
    ours, state = our_symbol(port, repo_root)
    if ours is None:
        raise ToolError(f"{port.name}: our {port.target_symbol} not found ({state})")
    if state != "ok":
        drift.append(f"our {port.target_symbol} is {state} against the manifest")
    text = unified_diff(
        origin_sym.source,
        ours.source,
        f"a/{port.origin_path}::{port.origin_symbol}@{_short(sha)}",
        f"b/{port.target_path}::{port.target_symbol}",
    )
    report = {"name": port.name, "origin_commit": sha, "diff": text, "drift": drift}
    return report, DRIFT if drift else OK


def bump_port(
    port: Port, repo: OriginRepo, to: str, manifest: Path, dry_run: bool
) -> tuple[dict, int]:
    """Record ``to``'s commit and symbol fingerprint; nothing else changes."""
    sha = repo.resolve(to)
    if sha is None:
        raise ToolError(f"{port.name}: {to} not found in origin {repo.label}")
    sym = repo.symbol(sha, port.origin_path, port.origin_symbol)
    if sym is None:
        raise ToolError(
            f"{port.name}: {port.origin_path}::{port.origin_symbol} not found at {to}"
        )
    values = {"origin_commit": sha, "origin_fingerprint": sym.fingerprint}
    changed = (port.origin_commit, port.origin_fingerprint) != (sha, sym.fingerprint)
    written = changed and not dry_run
    if written:
        update_manifest(manifest, port, values)
    report = {
        "name": port.name,
        "side": "origin",
        "to": to,
        "old": {"commit": port.origin_commit, "fingerprint": port.origin_fingerprint},
        "new": {"commit": sha, "fingerprint": sym.fingerprint},
        "changed": changed,
        "written": written,
    }
    return report, OK


def _bump_text(report: dict) -> str:
    old, new = report["old"], report["new"]
    before = f"{_short(old.get('commit'))} {old['fingerprint'] or '-'}".strip()
    after = f"{_short(new.get('commit'))} {new['fingerprint']}".strip()
    if "commit" not in old:
        before, after = old["fingerprint"] or "-", new["fingerprint"]
    if not report["changed"]:
        state = "already recorded"
    else:
        state = "manifest updated" if report["written"] else "dry run, not written"
    return f"{report['name']}: {report['side']} {before} -> {after} ({state})"


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

    import_text = [
        _render_import(o_tree.body[i], names) for i, names in sorted(imports.items())
    ]
    splice.imports_added = [t.rstrip("\n") for t in import_text]
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
    edit.insert(import_at, _with_newlines(split_lines("".join(import_text)), nl))
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


################################################################################
# CLI
################################################################################
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable output",
    )
    common.add_argument(
        "--manifest",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"default: REPO_ROOT/{MANIFEST_RELPATH}",
    )
    common.add_argument(
        "--repo-root",
        type=Path,
        default=argparse.SUPPRESS,
        help="our repo (default: this script's repo)",
    )
    common.add_argument(
        "--port",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="act on this port only",
    )
    origin = argparse.ArgumentParser(add_help=False)
    origin.add_argument(
        "--origin",
        metavar="PATH_OR_URL",
        help="clone, git dir or URL (default: the manifest's origin_repo)",
    )
    origin.add_argument(
        "--cache-dir", type=Path, help="keep URL fetches here instead of a temp dir"
    )
    origin.add_argument(
        "--default-branch", metavar="REF", help="override default-branch detection"
    )

    parser = _Parser(
        prog="sync_fastvideo_port.py",
        description=__doc__.split("\n\n")[0],
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser(
        "status", parents=[common], help="offline: our side against the manifest"
    )
    check = sub.add_parser(
        "check", parents=[common, origin], help="origin drift and merge state"
    )
    check.add_argument(
        "--ref", help="origin ref to compare (default: refs/pull/<PR>/head)"
    )
    diff = sub.add_parser(
        "diff", parents=[common, origin], help="origin symbol against our port"
    )
    diff.add_argument("--ref", help="origin ref (default: the recorded commit)")
    bump = sub.add_parser(
        "bump", parents=[common, origin], help="record a reviewed origin ref"
    )
    bump_to = bump.add_mutually_exclusive_group(required=True)
    bump_to.add_argument("--to", metavar="REF", help="origin ref to record")
    bump_to.add_argument(
        "--ours", action="store_true", help="record our side (same as record)"
    )
    bump.add_argument("--dry-run", action="store_true")
    record = sub.add_parser(
        "record", parents=[common], help="record our side after a reviewed edit"
    )
    record.add_argument("--dry-run", action="store_true")
    export = sub.add_parser(
        "export", parents=[common], help="splice our port into an SGLang checkout"
    )
    export.add_argument("--sglang", required=True, metavar="CHECKOUT")
    export.add_argument(
        "--patch", metavar="FILE", help="also write the change as a git patch"
    )
    export.add_argument(
        "--dry-run", action="store_true", help="write nothing in the checkout"
    )
    export.add_argument(
        "--allow-drift", action="store_true", help="export an unrecorded edit"
    )
    return parser


def _run(args) -> tuple[list[dict], int, str]:
    repo_root = Path(getattr(args, "repo_root", DEFAULT_REPO_ROOT)).resolve()
    manifest = Path(getattr(args, "manifest", repo_root / MANIFEST_RELPATH))
    ports = load_manifest(manifest)
    one = args.command in ("bump", "record", "export")
    ports = select_ports(ports, getattr(args, "port", None), one)
    reports, code, texts = [], OK, []
    with ExitStack() as stack:
        origins = None
        if args.command in ("check", "diff", "bump") and not getattr(
            args, "ours", False
        ):
            origins = Origins(stack, args.origin, args.cache_dir)
        for port in ports:
            report, port_code, text = _run_port(
                args, port, repo_root, manifest, origins
            )
            reports.append(report)
            texts.append(text)
            code = max(code, port_code)
    return reports, code, "\n".join(texts)


def _run_port(args, port, repo_root, manifest, origins) -> tuple[dict, int, str]:
    command = args.command
    if command == "status":
        report, code = status_port(port, repo_root)
        return report, code, _status_text(report)
    if command == "record" or (command == "bump" and args.ours):
        report, code = record_port(port, repo_root, manifest, args.dry_run)
        return report, code, _bump_text(report)
    if command == "export":
        report, code = export_port(port, repo_root, args)
        return report, code, _export_text(report)
    extra = (
        getattr(args, "ref", None) or getattr(args, "to", None) or "",
        args.default_branch or "",
    )
    repo = origins.get(port, extra)
    if command == "check":
        report, code = check_port(port, repo, args.ref, args.default_branch)
        return report, code, _check_text(report)
    if command == "diff":
        report, code = diff_port(port, repo, args.ref, repo_root)
        notes = "".join(f"# drift: {d}\n" for d in report["drift"])
        return report, code, notes + report["diff"].rstrip("\n")
    report, code = bump_port(port, repo, args.to, manifest, args.dry_run)
    return report, code, _bump_text(report)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        reports, code, text = _run(args)
    except ToolError as exc:
        return _fail(args.command, as_json, str(exc))
    except Exception as exc:  # exit 1 would read as drift: every failure is 2
        return _fail(
            args.command, as_json, f"internal error: {type(exc).__name__}: {exc}"
        )
    if as_json:
        print(
            json.dumps(
                {"command": args.command, "exit_code": code, "ports": reports}, indent=2
            )
        )
    elif text:
        print(text)
    return code


def _fail(command: str, as_json: bool, message: str) -> int:
    message = " ".join(message.split())
    if as_json:
        print(json.dumps({"command": command, "exit_code": ERROR, "error": message}))
    print(f"error: {message}", file=sys.stderr)
    return ERROR


if __name__ == "__main__":
    sys.exit(main())
