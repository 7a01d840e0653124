"""What a lower precision costs in quality: one model, fp32 and quantized, scored on the same data side by side.

A fine-tuned model is scored on its task (accuracy, F1, ...); a language model by its loss and perplexity on a text
file; an encoder without a task by the cosine similarity of its sentence embeddings to fp32's, one per line of a
text file (the minimum says more than the mean: it is the sentence a search index would misplace)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.checkpoint.files import Loaded
from lmforge.checkpoint.loader import language_model
from lmforge.data.records import read_utf8
from lmforge.errors import LmforgeError
from lmforge.inference.embed import embed, read_texts
from lmforge.inference.evaluate import score_task

MAX_TOKENS = 2**16  # a language model's loss is measured on the text's first MAX_TOKENS tokens


def compare_quality(
    fp32: Loaded, quantized: Loaded, data: str | Path, batch_size: int = 32, device: str | torch.device = "cpu"
) -> dict:
    """{"fp32": scores, quantized.dtype: scores} (or {"cosine_min", ...} for an encoder's embeddings) on data."""
    fp32, quantized = language_model(fp32), language_model(quantized)
    if fp32.task is not None:
        return {dtype: score_task(loaded, data, batch_size, device) for dtype, loaded in _pair(fp32, quantized)}
    family = fp32.config.family
    if family == "gpt":
        return {dtype: text_loss(loaded, data, batch_size) for dtype, loaded in _pair(fp32, quantized)}
    if family == "bert":
        texts = read_texts(data)
        a, b = (embed(x.model, x.tokenizer, texts, batch_size) for x in (fp32, quantized))
        cosine = F.cosine_similarity(a, b, dim=-1)
        return {"sentences": len(texts), "cosine_min": cosine.min().item(), "cosine_mean": cosine.mean().item()}
    if family == "t5":
        raise LmforgeError(
            f"--report on an encoder-decoder: use lmforge evaluate --source S --target T --dtype {quantized.dtype} "
            "--compare fp32 on parallel data"
        )
    raise LmforgeError(
        f"--report scores GPTs, encoders and fine-tuned models; for this {family} model, report on a model "
        "fine-tuned from it (labelled data)"
    )


def _pair(fp32: Loaded, quantized: Loaded) -> list[tuple[str, Loaded]]:
    return [("fp32", fp32), (quantized.dtype, quantized)]


@torch.no_grad()
def text_loss(loaded: Loaded, path: str | Path, batch_size: int = 32) -> dict:
    """A language model's mean next-token loss (nats) and perplexity on a text file's first MAX_TOKENS tokens, read
    in windows of its context length that do not overlap."""
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = torch.tensor(tokenizer.encode(read_utf8(Path(path)))[:MAX_TOKENS])
    window = model.cfg.max_seq_len + 1  # inputs and their next tokens
    n = len(ids) // window
    if n == 0:
        raise LmforgeError(f"{path} holds {len(ids)} tokens: the loss needs at least {window} (one context)")
    windows = ids[: n * window].view(n, window)
    total = 0.0
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size]
        logits = model(batch[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum").item()
    loss = total / (n * (window - 1))
    return {"tokens": n * (window - 1), "loss": loss, "perplexity": math.exp(loss)}
