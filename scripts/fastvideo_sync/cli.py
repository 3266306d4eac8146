# SPDX-License-Identifier: Apache-2.0
"""Command line: the argument parser, dispatch to the commands, exit status.

Exit status: 0 in sync, 1 drift found, 2 error (one line on stderr; any
unexpected exception is reported as an internal error, never as drift).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

from . import __doc__ as _PACKAGE_DOC
from .commands import (
    _bump_text,
    _check_text,
    _status_text,
    bump_port,
    check_port,
    diff_port,
    record_port,
    status_port,
)
from .common import ERROR, OK, ToolError
from .export import _export_text, export_port
from .manifest import MANIFEST_RELPATH, load_manifest, select_ports
from .origin import Origins

# our repo: scripts/fastvideo_sync/cli.py -> scripts/ -> the repo root
DEFAULT_REPO_ROOT = Path(__file__).resolve().parent.parent.parent


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
        description=_PACKAGE_DOC.split("\n\n")[0],
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
