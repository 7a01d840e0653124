"""Masked-token prediction with a pretrained encoder: the most likely fillers of each [MASK] in a text."""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

MASK = "[MASK]"


def fill_mask(model, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in text, in order, the top_k fillers with their probabilities (special tokens excluded).

    [MASK] is written the same whatever the tokenizer; a byte-level BPE (RoBERTa) also reads its own <mask>.
    """
    if top_k < 1:
        raise LmforgeError(f"--top-k must be at least 1, not {top_k}")
    if model.mlm_head is None:
        raise LmforgeError(
            "this encoder has no MLM head (a bare encoder such as a sentence-embedding model): "
            "fill-mask needs a masked-LM checkpoint (e.g. BertForMaskedLM)"
        )
    if tokenizer.mask_id is None:
        raise LmforgeError(f"the checkpoint's {tokenizer.kind} tokenizer has no mask token: fill-mask needs an encoder")
    ids = tokenizer.encode(text.replace(MASK, tokenizer.backend.id_to_token(tokenizer.mask_id)))
    positions = [i + 1 for i, token in enumerate(ids) if token == tokenizer.mask_id]  # +1: after [CLS]
    if not positions:
        raise LmforgeError(f'the text has no {MASK}: put one where a word is missing, e.g. "the cat [MASK] on the mat"')
    ids = [tokenizer.cls_id, *ids, tokenizer.sep_id]
    if len(ids) > model.cfg.max_seq_len:
        raise LmforgeError(
            f"the text is {len(ids)} tokens with [CLS] and [SEP], but the model reads at most {model.cfg.max_seq_len}: "
            "shorten it"
        )
    device = next(model.parameters()).device
    with torch.inference_mode():
        hidden, _ = model.hidden(torch.tensor([ids], device=device))
        logits = model.mlm_logits(hidden[0, positions]).float()  # (n_masks, V)
        logits[:, tokenizer.special_ids] = float("-inf")
        top = logits.softmax(dim=-1).topk(min(top_k, logits.size(-1) - len(tokenizer.special_ids)), dim=-1)
    return [
        [(tokenizer.decode([i]).strip(), p) for i, p in zip(ids_row.tolist(), probs.tolist(), strict=True)]
        for ids_row, probs in zip(top.indices, top.values, strict=True)
    ]
