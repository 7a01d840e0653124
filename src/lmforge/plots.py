"""Figures written next to a run's outputs (PNG, headless): loss curves, attention maps, token attributions."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch


def pyplot():
    """matplotlib's pyplot on the Agg backend: no display needed, safe on servers and in tests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png_path: Path) -> Path:
    """Writes the figure under a temporary name, then renames it: a PNG is whole or absent.

    Figures without a layout engine of their own get a tight layout first."""
    png_path = Path(png_path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    tmp = png_path.with_name(f".tmp-{png_path.name}.{os.getpid()}.png")
    fig.savefig(tmp)
    pyplot().close(fig)
    os.replace(tmp, png_path)
    return png_path


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Train and validation loss against step, from a metrics.jsonl; None when there is nothing to plot."""
    records = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4), dpi=100)
    for points, label in ((train, "train"), (val, "validation")):
        if points:
            ax.plot(*zip(*points, strict=True), label=label, marker="o" if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png_path)


def plot_confusion(matrix: list[list[int]], labels: list[str], png_path: Path) -> Path:
    """A confusion matrix as a heat map with the counts written in (rows: true label, columns: predicted)."""
    k = len(labels)
    size = min(4 + 0.5 * k, 16)
    fig, ax = pyplot().subplots(figsize=(size, size), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black")
    return save_figure(fig, png_path)


def _labels(tokens: Sequence[str]) -> list[str]:
    """Tick labels that matplotlib draws as written: a `$` would start mathtext, a newline would break the axis."""
    return [t.replace("$", r"\$").replace("\n", "\\n") for t in tokens]


def plot_attention(weights: torch.Tensor, tokens: Sequence[str], title: str, png_path: Path) -> Path:
    """One layer's attention (n_head, T, T) as a grid of heatmaps: row = query token, column = key token."""
    n_head, t, tokens = weights.size(0), len(tokens), _labels(tokens)
    cols = min(n_head, 4)
    rows = math.ceil(n_head / cols)
    side = max(3.0, 0.22 * t + 1.0)
    fig, axes = pyplot().subplots(
        rows, cols, figsize=(side * cols + 1, side * rows + 0.5), dpi=100, squeeze=False, layout="constrained"
    )
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.axis("off")
            continue
        image = ax.imshow(weights[h].float().cpu().numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(f"head {h}", fontsize=9)
        ticks = range(t) if t <= 48 else []  # longer texts: labels would overlap
        labels = [tokens[i] for i in ticks]  # on the outer heads only: every head reads the same tokens
        ax.set_xticks(ticks, labels if h + cols >= n_head else [], rotation=90, fontsize=6)
        ax.set_yticks(ticks, labels if h % cols == 0 else [], fontsize=6)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="attention weight")
    fig.suptitle(f"{title} (row: query, column: key)")
    return save_figure(fig, png_path)


def plot_attributions(scores: Sequence[float], tokens: Sequence[str], title: str, png_path: Path) -> Path:
    """Attributions as bars per token: green pushed the explained score up, red pushed it down."""
    fig, ax = pyplot().subplots(figsize=(max(6.0, 0.3 * len(tokens) + 1.5), 3.5), dpi=100)
    ax.bar(range(len(tokens)), scores, color=["#1a9641" if s >= 0 else "#d7191c" for s in scores])
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(tokens)), _labels(tokens), rotation=90, fontsize=7)
    ax.set_ylabel("attribution")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, png_path)
