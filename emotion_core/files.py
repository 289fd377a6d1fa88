"""Opening user files: only regular files are read (a FIFO blocks ``open`` until a writer comes, a device never ends)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def not_regular(path: str | Path) -> str | None:
    """What ``path`` is when it is not a regular file (``"a folder"``, ``"a FIFO (named pipe)"``...); None if it is one.

    Uses ``os.stat`` (follows symlinks) so nothing is opened; a missing path raises ``FileNotFoundError``.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"
