"""Figures written next to a run's outputs (PNG, headless)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Train and validation loss against step, from a metrics.jsonl; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for points, label in ((train, "train"), (val, "validation")):
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o" if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, png_path)


def plot_confusion(matrix: list[list[int]], labels: list[str], png_path: Path) -> Path:
    """A confusion matrix as a heat map with the counts written in (rows: true label, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    size = min(4 + 0.5 * k, 16)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black")
    return _save(fig, png_path)


def _save(fig, png_path: Path) -> Path:
    """Writes the figure under a temporary name, then renames it: a PNG is whole or absent."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = png_path.with_name(f".tmp-{png_path.name}.{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
