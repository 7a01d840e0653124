"""Where lmforge keeps what it measures or builds once per machine (the hardware's figures, compiled kernels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$LMFORGE_CACHE, else ~/.cache/lmforge."""
    return Path(os.environ.get("LMFORGE_CACHE", Path.home() / ".cache" / "lmforge"))
