"""Autoregressive decoding on token ids with a KV cache (or, for a model without one, the whole sequence each step),
and the common sampling controls."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch


def process_logits(
    logits: torch.Tensor,
    seen: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """Applies repetition penalty, temperature, top-k and top-p (nucleus) filtering to (B, V) logits."""
    if repetition_penalty != 1.0 and seen is not None:  # CTRL (Keskar et al., 2019): discourage seen tokens
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / repetition_penalty, picked * repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if temperature != 1.0 and temperature > 0:
        logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def next_token(logits: torch.Tensor, greedy: bool, generator: torch.Generator | None) -> torch.Tensor:
    if greedy:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


@torch.inference_mode()
def stream(
    model,
    idx: torch.Tensor,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    eos_id: int | None = None,
    seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yields the next token ids (B,) one step at a time; the KV cache makes each step cost one token's forward.

    When the context window fills, the cache is rebuilt from the newest half of the window (a sliding window).
    temperature 0 or greedy=True picks the most likely token. A model without a KV cache (XLNet: no new_cache) runs
    its last max_seq_len - 1 tokens through model.next_token_logits at every step instead.
    """
    b, t = idx.shape
    window = model.cfg.max_seq_len
    if t > window:
        raise ValueError(f"prompt of {t} tokens exceeds the context of {window}")
    greedy = greedy or temperature == 0
    if greedy:  # only the repetition penalty can change which logit is largest
        temperature, top_k, top_p = 1.0, None, None
    # a head through lmforge.kernels.apply_kernels has an argmax (an int8 screen); a plain nn.Linear's logits are read
    cached = hasattr(model, "new_cache")
    head_argmax = cached and greedy and repetition_penalty == 1.0 and hasattr(model.lm_head, "argmax")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    seq = idx.new_empty(b, t + min(max_new_tokens, window))  # every id so far, written in place; doubled when full
    seq[:, :t] = idx
    n = t
    cache = model.new_cache(b, min(window, t + max_new_tokens)) if cached else None
    pending = idx
    finished = torch.zeros(b, dtype=torch.bool, device=idx.device) if eos_id is not None else None
    for _ in range(max_new_tokens):
        if cache is None:  # no KV cache (XLNet): the window run whole, its next position predicted from the others
            logits = model.next_token_logits(seq[:, max(0, n - window + 1) : n]).float()
        else:
            if cache.length + pending.size(1) > cache.max_len:
                cache = model.new_cache(b, window)
                pending = seq[:, n - window // 2 : n]
            hidden, _ = model.hidden(pending, cache=cache)
            logits = None if head_argmax else model.lm_head(hidden[:, -1]).float()
        if logits is None:  # the largest logit's index, without every logit (lmforge.kernels.argmax)
            token = model.lm_head.argmax(hidden[:, -1])
        else:
            logits = process_logits(logits, seq[:, :n], temperature, top_k, top_p, repetition_penalty)
            token = next_token(logits, greedy, generator)
        if finished is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        yield token
        if finished is not None and bool(finished.all()):
            return
        if n == seq.size(1):
            seq = torch.cat((seq, torch.empty_like(seq)), dim=1)
        seq[:, n] = token
        pending = seq[:, n : n + 1]
        n += 1


def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int = 128,
    should_stop: Callable[[torch.Tensor], bool] | None = None,
    **sampling,
) -> torch.Tensor:
    """Prompt ids (B, T) -> prompt followed by up to max_new_tokens new ids; see `stream` for the controls.

    should_stop(seq) may end decoding early (stop strings are checked this way).
    """
    was_training = model.training
    model.eval()
    out = [idx]
    try:
        for token in stream(model, idx, max_new_tokens, **sampling):
            out.append(token[:, None])
            if should_stop is not None and should_stop(torch.cat(out, dim=1)):
                break
    finally:
        model.train(was_training)
    return torch.cat(out, dim=1)
