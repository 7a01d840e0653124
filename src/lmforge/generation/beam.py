"""Beam search on token ids with a KV cache: the K most probable continuations kept at every step, finished
hypotheses scored with a length penalty, as transformers' `generate(num_beams=K)` does (so both pick the same tokens).

Each source keeps K running beams and K finished hypotheses. A step scores every beam's every next token, keeps the
2K best candidates, moves those that end (EOS, or the length limit) among the top K to the finished ones (score /
generated_length ** length_penalty) and continues with the best K that did not end; the cache rows follow their beams.
One loop, `search`, serves every model through a step function; `beam_search` wraps a decoder-only model (the prompt
starts each sequence) and `seq2seq_beam_search` an encoder-decoder (the encoder reads each source once, the decoder
starts from decoder_start_id, and only the tokens after it count in the length penalty, as in transformers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NEG = -1.0e9  # the score of a beam that must not be picked


def banned_ngrams(seqs: torch.Tensor, n: int) -> list[list[int]]:
    """Per row of seqs (R, T), the tokens that would repeat one of its n-grams (no_repeat_ngram_size)."""
    banned = []
    for row in seqs.tolist():
        if len(row) + 1 < n:
            banned.append([])
            continue
        prefix = tuple(row[len(row) - n + 1 :])
        banned.append([row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == prefix])
    return banned


def search(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    reorder: Callable[[torch.Tensor], None],
    idx: torch.Tensor,
    num_beams: int,
    max_length: int,
    length_penalty: float,
    early_stopping: bool | str,
    no_repeat_ngram_size: int,
    eos_id: int | None,
    fill: int,
) -> torch.Tensor:
    """The beam-search loop for any model. idx (B, T) starts every sequence; logits_of(new_ids) gives the next-token
    logits (B K, V) after new_ids (B K, T') (first the whole start, then each beam's last token) and reorder(rows) makes
    the model's cache follow the beams. Returns (B, T + L): the best hypotheses, shorter ones filled with fill."""
    b, t = idx.shape
    k = num_beams
    running = torch.full((b, k, max_length), fill, dtype=torch.long, device=idx.device)
    running[:, :, :t] = idx[:, None]
    finished = running.clone()
    running_scores = torch.zeros(b, k, device=idx.device)
    running_scores[:, 1:] = NEG  # the K beams start equal: only the first may grow at the first step
    finished_scores = torch.full((b, k), NEG, device=idx.device)
    finished_len = torch.zeros(b, k, dtype=torch.long, device=idx.device)
    is_finished = torch.zeros(b, k, dtype=torch.bool, device=idx.device)
    may_improve = torch.ones(b, 1, dtype=torch.bool, device=idx.device)
    top_k = torch.arange(2 * k, device=idx.device) < k  # only the K best candidates may finish
    batch_offset = torch.arange(b, device=idx.device)[:, None] * k
    pending, cur_len = idx.repeat_interleave(k, dim=0), t
    while True:
        log_probs = torch.log_softmax(logits_of(pending).float(), dim=-1)  # (B K, V)
        if no_repeat_ngram_size:
            for row, tokens in enumerate(banned_ngrams(running.view(b * k, -1)[:, :cur_len], no_repeat_ngram_size)):
                log_probs[row, tokens] = float("-inf")
        v = log_probs.size(-1)
        scores = (log_probs.view(b, k, v) + running_scores[:, :, None]).view(b, k * v)
        top_scores, top_index = scores.topk(2 * k, dim=1)  # (B, 2K)
        beam, token = top_index // v, top_index % v
        candidates = running.gather(1, beam[:, :, None].expand(-1, -1, max_length)).clone()
        candidates[:, :, cur_len] = token
        ends = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        if cur_len + 1 >= max_length:
            ends = torch.ones_like(ends)
        # the best K candidates that go on
        going = top_scores + ends.float() * NEG
        keep = going.topk(k, dim=1).indices
        running = candidates.gather(1, keep[:, :, None].expand(-1, -1, max_length))
        running_scores = going.gather(1, keep)
        parents = beam.gather(1, keep) + batch_offset
        # the candidates that end join the finished hypotheses if they beat them
        just = ends & top_k[None, :]
        done = top_scores / ((cur_len + 1 - t) ** length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)
        done = done + full.float() * NEG + (~may_improve).float() * NEG + (~just).float() * NEG
        merged = torch.cat((finished_scores, done), dim=1).topk(k, dim=1).indices
        finished = torch.cat((finished, candidates), dim=1).gather(1, merged[:, :, None].expand(-1, -1, max_length))
        finished_scores = torch.cat((finished_scores, done), dim=1).gather(1, merged)
        lengths = torch.full_like(token, cur_len + 1 - t)
        finished_len = torch.cat((finished_len, lengths), dim=1).gather(1, merged)
        is_finished = torch.cat((is_finished, just), dim=1).gather(1, merged)
        cur_len += 1
        best_len = max_length - t if early_stopping == "never" and length_penalty > 0.0 else cur_len - t
        best_running = running_scores[:, :1] / (best_len**length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)
        may_improve = may_improve & (best_running > worst_finished).any(dim=-1, keepdim=True)
        open_beams = not (bool(is_finished.all()) and early_stopping is True)
        if not (bool(may_improve.any()) and open_beams and not bool(ends.all())):
            break
        reorder(parents.view(-1))
        pending = running.view(b * k, -1)[:, cur_len - 1 : cur_len]
    return finished[:, 0, : t + int(finished_len[:, 0].max())]


@torch.inference_mode()
def beam_search(
    model,
    idx: torch.Tensor,
    num_beams: int = 4,
    max_new_tokens: int = 64,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    no_repeat_ngram_size: int = 0,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Prompt ids (B, T) -> (B, T + L): each prompt followed by its best hypothesis, L the longest of them, shorter
    ones filled with pad_id (or eos_id). early_stopping: True stops a source once it has K finished hypotheses, False
    once no running beam can beat them (estimated at the current length), "never" when none can at any length."""
    t = idx.size(1)
    max_length = t + max_new_tokens
    if max_length > model.cfg.max_seq_len:
        raise ValueError(f"{t} prompt tokens + {max_new_tokens} new exceed the context of {model.cfg.max_seq_len}")
    cache = model.new_cache(idx.size(0) * num_beams, max_length)

    def logits_of(new_ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = model.hidden(new_ids, cache=cache)
        return model.lm_head(hidden[:, -1])

    fill = (pad_id or eos_id) if eos_id is not None else -1
    was_training = model.training
    model.eval()
    try:
        return search(logits_of, cache.reorder, idx, num_beams, max_length, length_penalty, early_stopping,
                      no_repeat_ngram_size, eos_id, fill)  # fmt: skip
    finally:
        model.train(was_training)


@torch.inference_mode()
def seq2seq_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 4,
    max_new_tokens: int = 64,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    no_repeat_ngram_size: int = 0,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> torch.Tensor:
    """Source ids (B, S), attention_mask (B, S) 1 for real tokens -> (B, 1 + L): decoder_start_id and the best
    hypothesis of each source, shorter ones filled with pad_id (or eos_id when pad_id is 0, as transformers does);
    eos_id and pad_id default to the model's. The encoder runs once per source; its output is repeated for the K
    beams. early_stopping as in beam_search."""
    cfg = model.cfg
    eos_id = cfg.eos_id if eos_id is None else eos_id
    pad_id = cfg.pad_id if pad_id is None else pad_id
    b, k = input_ids.size(0), num_beams
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(input_ids, attention_mask).repeat_interleave(k, dim=0)  # (B K, S, d_model)
        mask = attention_mask.repeat_interleave(k, dim=0) if attention_mask is not None else None
        cache = model.new_cache(b * k, 1 + max_new_tokens)
        start = torch.full((b, 1), cfg.decoder_start_id, dtype=torch.long, device=input_ids.device)

        def logits_of(new_ids: torch.Tensor) -> torch.Tensor:
            return model.decode(new_ids, memory, mask, cache)[:, -1]

        return search(logits_of, cache.reorder, start, k, 1 + max_new_tokens, length_penalty, early_stopping,
                      no_repeat_ngram_size, eos_id, pad_id or eos_id)  # fmt: skip
    finally:
        model.train(was_training)
