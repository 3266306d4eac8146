# SPDX-License-Identifier: Apache-2.0
"""Read-only access to an origin repository through the ``git`` CLI.

``run_git`` (scrubbed environment, one-line errors), ``OriginRepo`` (objects,
refs, ancestry, default branch), local clones / git dirs, and URL fetches into
a bare repo (``fetch_url``, ``Origins``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from .common import _SHA_RE, ToolError
from .manifest import Port
from .symbols import Symbol, locate

_GIT_TIMEOUT_S = 1800
_LS_REMOTE_TIMEOUT_S = 120


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

    def merge_base(self, one: str, other: str) -> str | None:
        """A best common ancestor of two commits, or None when they share none."""
        proc = self.git("merge-base", one, other, check=False)
        if proc.returncode > 1:
            raise ToolError(f"git merge-base failed: {_last_line(proc.stderr)}")
        return proc.stdout.strip() or None if proc.returncode == 0 else None

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
