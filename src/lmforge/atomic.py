"""Writing files so that a reader finds them complete or absent: temporary names, fsync, rename."""

from __future__ import annotations

import os
from pathlib import Path

TMP = ".tmp-"  # the prefix of a file or folder still being written


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
