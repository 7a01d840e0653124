"""T5's span corruption: the noise statistics of the paper, inputs and targets that rebuild the original exactly,
sentinels at the end of the vocabulary, and an exact resume of the sampler."""

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers import models

from lmforge.data import DocumentSplit
from lmforge.errors import LmforgeError
from lmforge.objectives.span_corruption import (
    SpanCorruptionSampler,
    add_sentinels,
    corrupt,
    corrupted_lengths,
    noise_mask,
    raw_length,
    sentinel_ids,
)
from lmforge.tokenizer import WORDPIECE_SPECIALS, Tokenizer

PAD, SEP = 0, 3  # WordPiece's [PAD] and [SEP] (T5's end of sequence)


def tokenizer(n_words: int = 200, sentinels: bool = True) -> Tokenizer:
    vocab = [*WORDPIECE_SPECIALS, *(f"w{i}" for i in range(n_words))]
    tok = Tokenizer(tokenizers.Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")))
    return add_sentinels(tok) if sentinels else tok


def split(n_tokens: int = 2000) -> DocumentSplit:
    tokens = (5 + np.arange(n_tokens) % 200).astype(np.uint16)
    return DocumentSplit(tokens, np.array([0, n_tokens]), np.array([0, 1]))


def runs(mask: torch.Tensor) -> list[int]:
    """The lengths of the runs of True."""
    lengths, current = [], 0
    for m in [*mask.tolist(), False]:
        if m:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def rebuild(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """The original sequence: each sentinel of the input replaced by what follows the same sentinel in the target."""
    spans, current = {}, None
    for token in targets[:-1]:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    return [t for token in inputs[:-1] for t in (spans[token] if token in sentinels else [token])]


def test_noise_share_and_mean_span_length_are_t5s():
    generator = torch.Generator().manual_seed(0)
    masks = [noise_mask(length, generator) for length in (114, 200, 512) for _ in range(200)]
    share = sum(int(m.sum()) for m in masks) / sum(len(m) for m in masks)
    spans = [n for m in masks for n in runs(m)]
    assert abs(share - 0.15) < 0.005, share
    assert abs(np.mean(spans) - 3) < 0.15, np.mean(spans)
    assert all(not m[0] for m in masks)  # a clean span comes first, so the target starts with <extra_id_0>
    assert len({tuple(m.tolist()) for m in masks}) == len(masks)  # spans fall anew at every draw


def test_inputs_and_targets_rebuild_the_original_exactly():
    tok = tokenizer()
    sentinels = sentinel_ids(tok)
    generator = torch.Generator().manual_seed(1)
    for length in (2, 3, 10, 57, 141):
        for _ in range(50):
            ids = torch.randint(5, 205, (length,), generator=generator)
            inputs, targets = corrupt(ids, noise_mask(length, generator), sentinels, SEP)
            assert rebuild(inputs, targets, sentinels) == ids.tolist()
            assert (len(inputs), len(targets)) == corrupted_lengths(length)
            assert inputs[-1] == targets[-1] == SEP and targets[0] == sentinels[0]
            used = [t for t in inputs if t in sentinels]
            assert used == sentinels[: len(used)]  # <extra_id_0>, <extra_id_1>, ... in order


def test_sentinels_descend_from_the_end_of_the_vocabulary_as_in_t5():
    tok = tokenizer(n_words=200)
    ids = sentinel_ids(tok)
    assert len(ids) == 100 and ids[0] == tok.vocab_size - 1 and ids[99] == 205
    assert tok.encode("w3<extra_id_0>w4") == [8, tok.vocab_size - 1, 9]  # one token in text, too
    assert sentinel_ids(add_sentinels(tok)) == ids  # adding twice changes nothing


def test_a_tokenizer_without_sentinels_is_refused():
    with pytest.raises(LmforgeError, match="no sentinel tokens"):
        SpanCorruptionSampler(split(), tokenizer(sentinels=False), 4, 32, seed=0, decoder_start_id=PAD)


def test_batches_fit_seq_len_and_the_decoder_reads_the_targets_shifted_right():
    sampler = SpanCorruptionSampler(split(), tokenizer(), 8, 128, seed=0, decoder_start_id=PAD)
    batch = sampler.next()
    length = raw_length(128)
    assert batch["input_ids"].shape == (8, corrupted_lengths(length)[0]) and batch["input_ids"].size(1) <= 128
    assert corrupted_lengths(length + 1)[0] > 128  # the longest window that fits
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    assert (batch["decoder_input_ids"][:, 0] == PAD).all() and batch["attention_mask"].all()


def test_sampler_resumes_exactly():
    a = SpanCorruptionSampler(split(), tokenizer(), 4, 32, seed=3, decoder_start_id=PAD)
    a.next()
    state = a.state_dict()
    expected = a.next()
    b = SpanCorruptionSampler(split(), tokenizer(), 4, 32, seed=99, decoder_start_id=PAD)
    b.load_state_dict(state)
    got = b.next()
    assert all(torch.equal(expected[k], got[k]) for k in expected) and b.batches == 2
