"""One run per output directory: an exclusive flock on OUT/.lock for the whole run, which the kernel releases when the
process ends, however it ends (kill -9 included), so a lock is never left stale."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError

LOCK = ".lock"


def _acquire(path: Path) -> int:
    """The locked descriptor of path, which holds our pid; the holder's pid in the error when another process has it."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LmforgeError(
                f"cannot create {path.parent} ({e.strerror}): give a directory you can write in"
            ) from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if isinstance(e, FileNotFoundError) and not path.parent.exists():
                continue  # a run that had just created the folder removed it as it finished
            raise LmforgeError(f"cannot lock {path} ({e.strerror}): give a directory you can write in") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise LmforgeError(
                f"{path.parent} is in use by {who}, which holds {path}: wait until it finishes, or choose another "
                "output directory"
            ) from None
        try:
            ours = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            ours = False
        if ours:  # else the holder unlinked it between our open and our flock: lock the new file instead
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Holds OUT/.lock while the block runs; a second run on the same OUT is refused at once, naming the first.

    The file is removed when the block ends, and OUT too when this run created it and left it empty (a refused run)."""
    out = Path(out)
    created = not out.exists()
    path = out / LOCK
    fd = _acquire(path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still under the lock: a process that opened it meanwhile sees the new inode
        if created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                out.rmdir()
        os.close(fd)
