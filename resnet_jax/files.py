"""Writing output files so that nothing already there is lost."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path


def check_output_file(path) -> Path:
    """``path`` as a file to write: its folder must exist, and an existing ``path`` must be
    a regular file (a folder, a device or a pipe is refused, not replaced). Failures are
    ``OSError``s naming ``path``."""
    path = Path(path)
    if path.exists():
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
        if not stat.S_ISREG(mode):
            raise FileExistsError(errno.EEXIST, "is not a regular file (a device, pipe or "
                                  "socket); give a file name", str(path))
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise FileNotFoundError(errno.ENOENT, f"the folder {parent} {what}", str(path))
    return path


def write_atomically(path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a temporary sibling of ``path``, then rename it onto ``path``.

    A failure or an interrupt leaves no partial file and ``path`` as it was; the
    temporary name keeps ``path``'s suffix, so writers that pick a format by it work.
    """
    path = check_output_file(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["check_output_file", "write_atomically"]
