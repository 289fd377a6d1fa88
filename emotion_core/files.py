"""Opening user files: only regular files are read (a FIFO blocks ``open`` until a writer comes, a device never ends)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str | None:
    """What a file of ``mode`` is when it is not a regular file (``"a folder"``...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | Path) -> str | None:
    """What ``path`` is when it is not a regular file; None if it is one.

    Uses ``os.stat`` (follows symlinks) so nothing is opened; a missing path raises ``FileNotFoundError``.
    """
    return kind_of(os.stat(path).st_mode)
