"""Sentence embeddings: the mean of an encoder's final hidden states over the real tokens, L2-normalised (the recipe
of sentence-transformers' all-MiniLM-L6-v2), from texts or a file's lines, written to JSON lines or .npy."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.atomic import TMP, check_output_file
from lmforge.checkpoint.loader import from_pretrained
from lmforge.data.records import read_bytes
from lmforge.errors import LmforgeError
from lmforge.inference.predict import check_batch_size
from lmforge.tokenizer import Tokenizer


def embed(model, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(N, d_model) unit vectors, one per text, in the order given.

    Texts are cut at the tokenizer's max_length (sentence-transformers' max_seq_length) or the model's context, with
    [CLS] and [SEP] around them when the tokenizer has both; they run longest first, so each batch pads little.
    """
    if isinstance(texts, str):
        texts = [texts]
    check_batch_size(batch_size)
    context = model.cfg.max_seq_len
    ids = tokenizer.framed(list(texts), min(tokenizer.max_length or context, context))
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


def read_texts(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, one text each, so that row i of the embeddings is line i. A blank line is
    refused, with its number: dropped, it would shift the rows after it; embedded, it would be a vector of nothing."""
    raw = read_bytes(Path(path)).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as Windows tools write
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LmforgeError(
            f"{path}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}): save it as UTF-8 text"
        ) from None
    if not text:
        raise LmforgeError(f"{path} is empty: give one text per line")
    lines = text.removesuffix("\n").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise LmforgeError(f"{path}, line {number} is blank: give it a text or remove it (one text per line)")
    return [line.removesuffix("\r") for line in lines]


def embed_checkpoint(
    path: str | Path,
    texts: Sequence[str] = (),
    input_path: str | Path | None = None,
    output_path: str | Path | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    dtype: str | None = None,
    compile: bool = False,
) -> tuple[list[str], torch.Tensor]:
    """lmforge embed: texts, then input_path's lines, embedded by the model at path, and written to output_path when
    given; returns the texts and their vectors. Every mistake in the inputs is reported before the model loads."""
    texts = list(texts) + (read_texts(input_path) if input_path is not None else [])
    if not texts:
        raise LmforgeError("nothing to embed: give --text TEXT (repeatable) or --input FILE (one text per line)")
    if output_path is not None:
        check_output_file(output_path, {"--input": input_path})
    check_batch_size(batch_size)
    model, tokenizer = from_pretrained(path, device, allow_pickle=allow_pickle, dtype=dtype, compile=compile)
    vectors = embed(model, tokenizer, texts, batch_size)
    if output_path is not None:
        save_embeddings(output_path, texts, vectors)
    return texts, vectors


def save_embeddings(path: str | Path, texts: Iterable[str], vectors: torch.Tensor) -> Path:
    """Writes .npy (an (N, d) float32 array) or JSON lines ({"text", "embedding"} per line), atomically, making
    missing parent directories."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP}{path.name}.{os.getpid()}")
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
