# SPDX-License-Identifier: Apache-2.0
"""Shared by every module: exit codes, ToolError, UTF-8 file reads, atomic writes.

Nothing here knows about ports, git or ASTs.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

OK, DRIFT, ERROR = 0, 1, 2
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


class ToolError(Exception):
    """A failure reported as one line on stderr, exit status 2."""


def read_text(path: Path, label: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{label}: not UTF-8") from None
    except OSError as exc:
        raise ToolError(f"{label}: {exc.strerror or exc}") from None


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
