"""Shared fixtures: a small synthetic corpus with learnable structure and a tiny training config."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY = [
    "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_seq_len=16",
    "train.batch_size=4", "train.eval_every=5", "train.eval_steps=2", "train.warmup_steps=2",
    "train.log_every=1", "train.progress=false",
]  # fmt: skip


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Text a tiny model can learn: short repeated sentences with a few words varying."""
    rng = random.Random(0)
    words = ["red", "blue", "green", "cat", "dog", "bird"]
    lines = [f"the {rng.choice(words)} {rng.choice(words)} sat on the mat.\n" for _ in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def tiny_overrides(corpus: Path, tmp_path: Path) -> list[str]:
    return [*TINY, f"data.path={corpus}", f"train.out={tmp_path / 'run'}"]
