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
    min_new_tokens: int = 0,
) -> torch.Tensor:
    """The beam-search loop for any model. idx (B, T) starts every sequence; logits_of(new_ids) gives the next-token
    logits (R, V) after new_ids (R, T') (first the whole start, then each beam's last token), R = K x the sources
    still searching, and reorder(rows) makes the model's state follow the beams: row i of the next step continues
    row rows[i] of this one. A source whose hypotheses can no longer change leaves the batch (rows gets shorter), so
    later steps compute only the live sources. Returns (B, T + L): the best hypotheses, shorter ones filled with
    fill."""
    b, t = idx.shape
    k = num_beams
    dev = idx.device
    running = torch.full((b, k, max_length), fill, dtype=torch.long, device=dev)
    running[:, :, :t] = idx[:, None]
    finished = running.clone()
    running_scores = torch.zeros(b, k, device=dev)
    running_scores[:, 1:] = NEG  # the K beams start equal: only the first may grow at the first step
    finished_scores = torch.full((b, k), NEG, device=dev)
    finished_len = torch.zeros(b, k, dtype=torch.long, device=dev)
    is_finished = torch.zeros(b, k, dtype=torch.bool, device=dev)
    may_improve = torch.ones(b, 1, dtype=torch.bool, device=dev)
    top_k = torch.arange(2 * k, device=dev) < k  # only the K best candidates may finish
    live = torch.arange(b, device=dev)  # the sources still searching, in the order of the running rows
    best = torch.full((b, max_length), fill, dtype=torch.long, device=dev)  # a source's answer once it leaves
    best_len = torch.zeros(b, dtype=torch.long, device=dev)
    pending, cur_len = idx.repeat_interleave(k, dim=0), t
    while True:
        n = live.numel()
        log_probs = torch.log_softmax(logits_of(pending).float(), dim=-1)  # (n K, V)
        if eos_id is not None and cur_len - t < min_new_tokens:
            log_probs[:, eos_id] = float("-inf")
        if no_repeat_ngram_size:
            for row, tokens in enumerate(banned_ngrams(running.view(n * k, -1)[:, :cur_len], no_repeat_ngram_size)):
                log_probs[row, tokens] = float("-inf")
        v = log_probs.size(-1)
        scores = (log_probs.view(n, k, v) + running_scores[:, :, None]).view(n, k * v)
        top_scores, top_index = scores.topk(2 * k, dim=1)  # (n, 2K)
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
        parents = beam.gather(1, keep) + torch.arange(n, device=dev)[:, None] * k
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
        best_len_now = max_length - t if early_stopping == "never" and length_penalty > 0.0 else cur_len - t
        best_running = running_scores[:, :1] / (best_len_now**length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)
        may_improve = may_improve & (best_running > worst_finished).any(dim=-1, keepdim=True)
        # a source is settled when no running beam can join its finished ones, or it has K and stops early
        settled = ~may_improve[:, 0] | (is_finished.all(dim=-1) & (early_stopping is True))
        if bool(ends.all()):  # the length limit (at most K of the 2K candidates can end with EOS)
            settled = torch.ones_like(settled)
        if bool(settled.any()):
            gone = live[settled]
            best[gone], best_len[gone] = finished[settled, 0], finished_len[settled, 0]
            stay = (~settled).nonzero().squeeze(1)
            if stay.numel() == 0:
                break
            live, parents = live[stay], parents[stay]
            running, running_scores, may_improve = running[stay], running_scores[stay], may_improve[stay]
            finished, finished_scores = finished[stay], finished_scores[stay]
            finished_len, is_finished = finished_len[stay], is_finished[stay]
        reorder(parents.view(-1))
        pending = running.view(live.numel() * k, -1)[:, cur_len - 1 : cur_len]
    return best[:, : t + int(best_len.max())]


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
    min_new_tokens: int = 0,
) -> torch.Tensor:
    """Source ids (B, S), attention_mask (B, S) 1 for real tokens -> (B, 1 + L): decoder_start_id and the best
    hypothesis of each source, shorter ones filled with pad_id (or eos_id when pad_id is 0, as transformers does);
    eos_id and pad_id default to the model's. The encoder runs once per source; its output is repeated for the K
    beams. early_stopping as in beam_search; EOS is forbidden before min_new_tokens (as in transformers)."""
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

        def reorder(rows: torch.Tensor) -> None:
            nonlocal memory, mask
            if rows.numel() == memory.size(0):
                # the K beams of a source share its memory and cross-attention keys/values: only self-attention's move
                cross, cache.cross = cache.cross, {}
                cache.reorder(rows)
                cache.cross = cross
                return
            cache.reorder(rows)  # sources left: their rows go, cross-attention's too
            memory = memory.index_select(0, rows)
            mask = mask.index_select(0, rows) if mask is not None else None

        return search(logits_of, reorder, start, k, 1 + max_new_tokens, length_penalty, early_stopping,
                      no_repeat_ngram_size, eos_id, pad_id or eos_id, min_new_tokens)  # fmt: skip
    finally:
        model.train(was_training)
