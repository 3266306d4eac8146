# SPDX-License-Identifier: Apache-2.0
"""Keep code ported from FastVideo pull requests in sync with its origin.

The package behind ``scripts/sync_fastvideo_port.py`` (run that script; see
its docstring and docs/origin-sync.md for the commands). One concern a module:

  common    exit codes, ToolError, UTF-8 reads and atomic writes
  symbols   AST fingerprints and symbol location in source text
  manifest  load/validate ``scripts/fastvideo_ports.toml``; textual value edits
  origin    git access: run_git, OriginRepo, local origins, URL fetches, Origins
  commands  status, record, check, diff, bump (reports and their text)
  splice    method-level splice of our class into upstream text
  export    the export command: checkout safety, patch, writes
  cli       argument parser, dispatch, exit status, main

Python standard library only (3.11+); origins are read with the ``git`` CLI.
"""
