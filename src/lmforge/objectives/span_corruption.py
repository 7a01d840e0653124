"""T5's span corruption (Raffel et al., 2020, section 3.1.4): about 15% of the tokens, in spans of mean length 3,
each span replaced in the input by one sentinel; the target is the sentinels each followed by the span it replaced.

The noise mask follows Hugging Face's run_t5_mlm_flax `random_spans_noise_mask`, drawn from a torch.Generator so a
sampler's state resumes it exactly. Sentinels are <extra_id_0>, <extra_id_1>, ... added to the tokenizer after its
own vocabulary in descending order, so <extra_id_0> has the last id, as in T5.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken

from lmforge.data.documents import DocumentSplit
from lmforge.data.parallel import special_ids
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

NOISE_DENSITY = 0.15
MEAN_SPAN_LENGTH = 3.0
N_SENTINELS = 100  # T5's extra_ids


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


def add_sentinels(tokenizer: Tokenizer, n: int = N_SENTINELS) -> Tokenizer:
    """Appends <extra_id_{n-1}> ... <extra_id_0> to the vocabulary (a no-op when it has them): the ids below are
    untouched, so data tokenized before reads the same."""
    if tokenizer.backend.token_to_id(sentinel(0)) is None:
        tokenizer.backend.add_special_tokens([AddedToken(sentinel(i), special=True) for i in reversed(range(n))])
    return tokenizer


def sentinel_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of <extra_id_0>, <extra_id_1>, ... in order; a tokenizer without them is a user mistake."""
    ids = []
    while (i := tokenizer.backend.token_to_id(sentinel(len(ids)))) is not None:
        ids.append(i)
    if not ids:
        raise LmforgeError(
            f"the {tokenizer.kind} tokenizer has no sentinel tokens (<extra_id_0>, ...) for T5's span corruption: "
            "train one with the t5 family (data.tokenizer bpe or wordpiece), which adds them"
        )
    return ids


def noise_counts(length: int, density: float = NOISE_DENSITY, mean_span: float = MEAN_SPAN_LENGTH) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of `length` >= 2 tokens: at least one of each, a clean token left."""
    noise = min(max(round(length * density), 1), length - 1)
    spans = max(round(min(noise, length - noise) / mean_span), 1)
    return noise, spans


def corrupted_lengths(length: int, density: float = NOISE_DENSITY, mean_span: float = MEAN_SPAN_LENGTH):
    """(input, target) lengths, EOS included, of a corrupted sequence of `length` tokens."""
    noise, spans = noise_counts(length, density, mean_span)
    return length - noise + spans + 1, noise + spans + 1


def raw_length(input_length: int, density: float = NOISE_DENSITY, mean_span: float = MEAN_SPAN_LENGTH) -> int:
    """The most tokens whose corrupted input fits in input_length (T5's compute_input_and_target_lengths)."""
    length = 2
    while corrupted_lengths(length + 1, density, mean_span)[0] <= input_length:
        length += 1
    return length


def _segments(n_items: int, n_segments: int, generator: torch.Generator) -> torch.Tensor:
    """n_items cut into n_segments non-empty runs at random: their lengths."""
    cuts = torch.randperm(n_items - 1, generator=generator)[: n_segments - 1].sort().values + 1
    bounds = torch.cat([torch.tensor([0]), cuts, torch.tensor([n_items])])
    return bounds.diff()


def noise_mask(
    length: int, generator: torch.Generator, density: float = NOISE_DENSITY, mean_span: float = MEAN_SPAN_LENGTH
) -> torch.Tensor:
    """(length,) bool, True on the noise: clean and noise spans alternate, starting with a clean one."""
    noise, spans = noise_counts(length, density, mean_span)
    clean_lengths, noise_lengths = _segments(length - noise, spans, generator), _segments(noise, spans, generator)
    runs = torch.stack([clean_lengths, noise_lengths], dim=1).flatten()  # clean, noise, clean, noise, ...
    return torch.arange(2 * spans).remainder(2).bool().repeat_interleave(runs)


def corrupt(ids: torch.Tensor, mask: torch.Tensor, sentinels: list[int], eos: int) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of one sequence: each noise span becomes sentinel k in the input; the target holds
    sentinel k and then the span, for each span in turn, then EOS."""
    starts = mask & ~torch.nn.functional.pad(mask[:-1], (1, 0), value=False)  # the first token of each span
    span = starts.cumsum(0) - 1  # the span each noise token belongs to
    if int(starts.sum()) > len(sentinels):
        raise LmforgeError(f"{int(starts.sum())} noise spans need more sentinels than the {len(sentinels)} there are")
    inputs, targets = [], []
    for token, noisy, first, k in zip(ids.tolist(), mask.tolist(), starts.tolist(), span.tolist(), strict=True):
        if not noisy:
            inputs.append(token)
            continue
        if first:
            inputs.append(sentinels[k])
            targets.append(sentinels[k])
        targets.append(token)
    return inputs + [eos], targets + [eos]


class SpanCorruptionSampler:
    """Random windows of a split's tokens (documents back to back, as T5 packs C4), span-corrupted anew at every
    draw from a private generator; the BatchSampler interface (next, state_dict, load_state_dict)."""

    def __init__(self, split: DocumentSplit, tokenizer: Tokenizer, batch_size: int, seq_len: int, seed: int,
                 decoder_start_id: int):  # fmt: skip
        self.sentinels = sentinel_ids(tokenizer)
        self.pad, self.eos = special_ids(tokenizer)
        if seq_len < 4:
            raise LmforgeError(f"train.seq_len = {seq_len} leaves no room for a corrupted span: use 4+")
        self.tokens = split.tokens
        if len(self.tokens) < 2:
            raise LmforgeError(f"the split has {len(self.tokens)} token(s): span corruption needs 2; use more text")
        self.length = min(raw_length(seq_len), len(self.tokens))  # tokens per example, before corruption
        self.batch_size, self.decoder_start_id = batch_size, decoder_start_id
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def next(self) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (B, S); labels (B, T) and decoder_input_ids, the labels shifted right."""
        starts = torch.randint(len(self.tokens) - self.length + 1, (self.batch_size,), generator=self.generator)
        inputs, targets = [], []
        for start in starts.tolist():
            ids = torch.from_numpy(self.tokens[start : start + self.length].astype("int64"))
            x, y = corrupt(ids, noise_mask(self.length, self.generator), self.sentinels, self.eos)
            inputs.append(x)
            targets.append(y)
        input_ids = torch.tensor(inputs)
        labels = torch.tensor(targets)
        decoder_input_ids = torch.cat([torch.full_like(labels[:, :1], self.decoder_start_id), labels[:, :-1]], dim=1)
        self.batches += 1
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids, dtype=torch.bool),
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
        }

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = state["batches"]
