"""The one writer of user-named output files (``--out``): never replaces what the user did not mean.

- Refused with a ``DataError`` naming the path: a target that is not a regular file (symlink, FIFO, device,
  socket, folder) or is read-only, one of the command's inputs (hard links too), a path inside an input
  folder, an unwritable folder.
- The write: a temporary file beside the target, fsynced, renamed over it (old file or new, never half).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from emotion_core.errors import DataError
from emotion_core.files import kind_of


def _same_or_inside(out: Path, inputs: Iterable[str | Path]) -> str | None:
    """The input ``out`` would overwrite (same file) or write into (an input folder), if any."""
    for item in inputs:
        path = Path(item)
        try:
            if path.is_dir():
                if out.resolve().is_relative_to(path.resolve()):
                    return f"it is inside the input folder {path}"
            elif out.exists() and path.exists() and os.path.samefile(out, path):
                return f"it is the input file {path}"
        except OSError:
            continue  # an input that cannot be examined cannot be the target either
    return None


def check_output_file(out_path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """``out_path`` as a file that can be written safely (missing parent folders are created on write);
    a ``DataError`` naming it otherwise. Called before any work, so a typo fails in a second."""
    out = Path(out_path)
    try:
        mode = out.lstat().st_mode  # lstat: a symlink is judged itself, not by what it points to
    except (FileNotFoundError, NotADirectoryError):  # a new file, or one under a file (reported below)
        mode = None
    except OSError as exc:
        raise DataError(f"cannot write here: {exc.strerror}", file=str(out)) from None
    if mode is not None and stat.S_ISDIR(mode):
        raise DataError("--out is a folder; give the path of the CSV file to write", file=str(out))
    if mode is not None and not stat.S_ISREG(mode):
        raise DataError(
            f"--out is {kind_of(mode)}; it is not replaced: give the path of a regular file (or a new one)",
            file=str(out),
        )
    if mode is not None and not os.access(out, os.W_OK):  # read-only: the user protected it (never true for root)
        raise DataError("--out is read-only; it is not replaced: give another path or make it writable", file=str(out))
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DataError(f"cannot write here: {parent} is a file, not a folder", file=str(out))
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"cannot write here: the folder {parent} is not writable", file=str(out))
    clash = _same_or_inside(out, inputs)
    if clash:
        raise DataError(f"--out would overwrite an input: {clash}; give another path", file=str(out))
    return out


def write_output_atomically(out_path: str | Path, text: str, inputs: Iterable[str | Path] = ()) -> Path:
    """Write ``text`` (UTF-8) to ``out_path`` after ``check_output_file``: temp file + fsync + rename."""
    out = check_output_file(out_path, inputs)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", encoding="utf-8") as handle:  # "x": never follows or reuses an existing name
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        check_output_file(out, inputs)  # again, just before the rename: the target may have changed meanwhile
        os.replace(tmp, out)
        _fsync_folder(out.parent)
    except OSError as exc:
        _remove(tmp)
        raise DataError(f"cannot write the file ({exc.strerror or exc}); nothing was written", file=str(out)) from None
    except BaseException:
        _remove(tmp)  # never leave a half-written temporary file beside the target
        raise
    return out


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass  # it could not be created either (the folder is not writable)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
