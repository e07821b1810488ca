"""One training run per run directory: an exclusive ``flock`` on ``<run>/.lock``.

The kernel releases the lock when the process ends however it ends (exit, crash,
SIGKILL), so no stale lock is ever left to clean up. The file holds the holder's PID,
which a refused second run names. The file itself stays (removing it would let two
runs lock two different files of the same name).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..errors import ResNetJaxError

LOCK_FILE = ".lock"


class RunDirectoryInUse(ResNetJaxError):
    """Another process holds the run directory's lock."""


class RunLock:
    """``with RunLock(run_dir):`` holds the directory's lock (creating the directory)."""

    def __init__(self, directory):
        self.path = Path(directory) / LOCK_FILE
        self._fd = None

    def acquire(self) -> RunLock:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(self.path.parent))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirectoryInUse(
                f"{self.path.parent} is in use by another training run (PID {holder}); wait for "
                "it to end, or choose another --output"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
