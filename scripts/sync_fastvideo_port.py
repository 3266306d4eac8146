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

This file is the entry point only; the code is the ``fastvideo_sync`` package
next to it (scripts/fastvideo_sync/). It runs from any working directory.
"""

import sys
from pathlib import Path

# scripts/ on sys.path, so the package imports however this file is started
_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

from fastvideo_sync.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
