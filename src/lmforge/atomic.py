"""Writing files so that a reader finds them complete or absent (temporary names, fsync, rename), and refusing, before
any work, an output path that cannot be written or would overwrite an input."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lmforge.errors import LmforgeError

TMP = ".tmp-"  # the prefix of a file or folder still being written
Inputs = Mapping[str, str | Path | None]  # a verb's input paths by the name the user knows them by, e.g. "--input"


def fsync_dir(path: Path) -> None:
    """Makes the renames inside a directory durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """path holds text, whole, or what it held before."""
    tmp = path.with_name(f"{TMP}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_output_file(path: str | Path, reads: Inputs | None = None, flag: str = "--output") -> Path:
    """Refuses, before any work, an output file that would replace an input or could not be written: a run that
    fails at its last step has wasted its work."""
    path = Path(path)
    _check_not_an_input(path, reads, flag)
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise LmforgeError(f"{flag} {path} is {kind}: give the path of a file to write")
    _check_writable(path.parent, path, flag)
    return path


def check_output_dir(path: str | Path, reads: Inputs | None = None, flag: str = "--out") -> Path:
    """check_output_file for a verb that writes a directory."""
    path = Path(path)
    _check_not_an_input(path, reads, flag, "; it is a file: give a new directory")
    if path.exists() and not path.is_dir():
        raise LmforgeError(f"{flag} {path} is a file: give a directory (new, or one this command wrote)")
    _check_writable(path, path, flag)
    return path


def _check_not_an_input(path: Path, reads: Inputs | None, flag: str, fix: str = ": give another path") -> None:
    for name, source in (reads or {}).items():
        if source is not None and _same(path, Path(source)):
            raise LmforgeError(f"{flag} {path} is {name} itself{fix}, so the input is not overwritten")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link or a symlink is the same file too
    except OSError:  # one of them does not exist (yet)
        return False


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    """The nearest existing folder at or above `folder` must be a directory we may write in."""
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
    except OSError as e:  # a folder on the way we may not look into
        raise LmforgeError(f"{flag} {path}: {e.strerror}: give a path in a directory you can write in") from None
    if not existing.is_dir():
        raise LmforgeError(f"{flag} {path} is inside {existing}, which is a file: give a path in a directory")
    if not os.access(existing, os.W_OK):
        raise LmforgeError(f"{flag} {path}: {existing} is not writable: give a path in a writable directory")
