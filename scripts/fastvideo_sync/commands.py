# SPDX-License-Identifier: Apache-2.0
"""The ``status``, ``record``, ``check``, ``diff`` and ``bump`` commands.

Each ``*_port`` function returns ``(report dict, exit code)`` for one port; the
``_*_text`` functions render a report for humans. ``--json`` prints the dicts.
"""

from __future__ import annotations

from pathlib import Path

from .common import DRIFT, OK, ToolError, read_text
from .manifest import Port, update_manifest
from .origin import OriginRepo
from .symbols import Symbol, locate, unified_diff


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


def pre_pr_symbol(repo: OriginRepo, port: Port, default_sha: str) -> Symbol | None:
    """The origin symbol as it was before the PR, or None when unknown.

    "Before the PR" is the merge-base of ``origin_commit`` with the default
    branch, never ``origin_commit^``: a PR head that merged the default branch
    into itself is a merge commit whose first parent is the PR's own code. When
    ``origin_commit`` is already on the default branch (the PR was merged), it
    is its own merge-base and no pre-PR point is known: None.
    """
    base = repo.merge_base(port.origin_commit, default_sha)
    if base is None or base == port.origin_commit:
        return None
    return repo.symbol(base, port.origin_path, port.origin_symbol)


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
        before = pre_pr_symbol(repo, port, default[1])
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
