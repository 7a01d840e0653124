"""Sentence embeddings: the mean of an encoder's final hidden states over the real tokens, L2-normalised (the recipe
of sentence-transformers' all-MiniLM-L6-v2), and writing them to JSON lines or .npy."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer


def embed(model, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(N, d_model) unit vectors, one per text, in the order given.

    Texts are cut at the tokenizer's max_length (sentence-transformers' max_seq_length) or the model's context, with
    [CLS] and [SEP] around them when the tokenizer has both; they run longest first, so each batch pads little.
    """
    if isinstance(texts, str):
        texts = [texts]
    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1, not {batch_size}")
    context = model.cfg.max_seq_len
    limit = min(tokenizer.max_length or context, context)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    wrap = cls is not None and sep is not None
    ids = [[cls, *x[: limit - 2], sep] if wrap else x[:limit] for x in tokenizer.encode_batch(list(texts))]
    if any(not x for x in ids):
        raise LmforgeError("an empty text has no tokens to embed with this tokenizer: drop it or give it some text")
    pad = tokenizer.pad_id or 0
    device = next(model.parameters()).device
    out = torch.empty(len(ids), model.cfg.d_model)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            x = torch.full((len(rows), len(ids[rows[0]])), pad, dtype=torch.long)
            mask = torch.zeros_like(x, dtype=torch.bool)
            for r, i in enumerate(rows):
                x[r, : len(ids[i])], mask[r, : len(ids[i])] = torch.tensor(ids[i]), True
            hidden, _ = model.hidden(x.to(device), attention_mask=None if mask.all() else mask.to(device))
            weights = mask.to(device, hidden.dtype).unsqueeze(-1)  # (B, T, 1): 1 on real tokens
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
            out[rows] = F.normalize(pooled.float(), dim=-1).cpu()
    return out


def save_embeddings(path: str | Path, texts: Iterable[str], vectors: torch.Tensor) -> Path:
    """Writes .npy (an (N, d) float32 array) or JSON lines ({"text", "embedding"} per line), atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise LmforgeError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if path.suffix == ".npy":
                np.save(f, vectors.numpy().astype(np.float32))
            else:
                f.writelines(line.encode("utf-8") + b"\n" for line in json_lines(texts, vectors))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def json_lines(texts: Iterable[str], vectors: torch.Tensor) -> Iterable[str]:
    for text, vector in zip(texts, vectors.tolist(), strict=True):
        yield json.dumps({"text": text, "embedding": vector}, ensure_ascii=False)
