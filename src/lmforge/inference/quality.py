"""What a lower precision costs in quality: one model, fp32 and quantized, scored on the same data side by side.

A fine-tuned model is scored on its task (accuracy, F1, ...); a language model by its loss and perplexity on a text
file; an encoder without a task by the cosine similarity of its sentence embeddings to fp32's, one per line of a
text file (the minimum says more than the mean: it is the sentence a search index would misplace)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.checkpoint.files import Loaded
from lmforge.checkpoint.loader import language_model
from lmforge.data.records import read_utf8
from lmforge.data.sampler import iter_eval_blocks
from lmforge.errors import LmforgeError
from lmforge.inference.embed import embed, read_texts
from lmforge.inference.evaluate import score_task
from lmforge.training.loop import mean_metrics

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
        return {dtype: text_loss(loaded, data, batch_size, device) for dtype, loaded in _pair(fp32, quantized)}
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


def text_loss(loaded: Loaded, path: str | Path, batch_size: int = 32, device: str | torch.device = "cpu") -> dict:
    """A language model's mean next-token loss (nats) and perplexity on a text file's first MAX_TOKENS tokens, in
    the consecutive blocks of its context length that pretraining's evaluation reads (data.iter_eval_blocks). The
    logits come from the model's own LM head, quantized or not."""
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = np.asarray(tokenizer.encode(read_utf8(Path(path)))[:MAX_TOKENS])
    context = model.cfg.max_seq_len
    if len(ids) <= context:
        raise LmforgeError(f"{path} holds {len(ids)} tokens: the loss needs at least {context + 1} (one context)")
    blocks = iter_eval_blocks(ids, batch_size, context)
    loss = mean_metrics(model, blocks, _next_token_loss, torch.device(device), "fp32")["loss"]
    return {"tokens": (len(ids) - 1) // context * context, "loss": loss, "perplexity": math.exp(loss)}


def _next_token_loss(model, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()), {}
