"""What each family trains on: its data, batches, loss and FLOP count. train.py runs the one loop for all of them.

A task's loss takes (model, batch) and returns (loss, metrics); the metrics (detached scalars) go to metrics.jsonl.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch

from lmforge.config import RunConfig
from lmforge.data import (
    BatchSampler,
    PretrainingSampler,
    ensure_prepared,
    iter_eval_blocks,
    load_documents,
    load_prepared,
    prepare_documents,
)
from lmforge.errors import LmforgeError
from lmforge.objectives.losses import causal_lm_loss, pretraining_loss, seq2seq_loss
from lmforge.objectives.span_corruption import (
    SpanCorruptionSampler,
    add_sentinels,
    corrupted_lengths,
    raw_length,
)


def _prepared(cfg: RunConfig, cache_dir: Path, tokenizer: Path | None, **builder) -> Path:
    """cfg's data prepared with cfg's tokenizer, or with `tokenizer` (a tokenizer.json) when given."""
    d = cfg.data
    return ensure_prepared(
        d.path, str(tokenizer or d.tokenizer), d.vocab_size, d.val_fraction, cache_dir, cfg.train.progress,
        d.lowercase, d.strip_accents, on_bad_line=d.on_bad_line, started_with=tokenizer and d.tokenizer, **builder,
    )  # fmt: skip


def flops_per_token(model, seq_len: int) -> float:
    """GPT: 6N for the matrices plus 12 * n_layer * d_model * T for attention (PaLM appendix B, nanoGPT)."""
    c = model.cfg
    n = model.num_parameters(exclude_embeddings=True)
    if c.tie_embeddings:  # the LM head's matmul runs whether or not its weight is shared
        n += c.d_model * c.vocab_size
    return 6 * n + 12 * c.n_layer * c.d_model * seq_len


class CausalLM:
    """GPT: one packed token stream, random blocks, next-token loss; evaluation on consecutive validation blocks."""

    perplexity_of = "loss"

    def data(self, cfg: RunConfig, cache_dir: Path, tokenizer: Path | None = None):
        return load_prepared(_prepared(cfg, cache_dir, tokenizer))

    def sampler(self, cfg: RunConfig, data, seed: int, rank: int = 0, world_size: int = 1) -> BatchSampler:
        return BatchSampler(data.train, cfg.train.batch_size, cfg.train.seq_len, seed, rank, world_size)

    @staticmethod
    def loss(model, batch) -> tuple[torch.Tensor, dict]:
        return causal_lm_loss(model, *batch), {}

    def eval_batches(self, cfg: RunConfig, data) -> Iterable | None:
        t = cfg.train
        if len(data.val) < t.seq_len + 1:
            return None
        return itertools.islice(iter_eval_blocks(data.val, t.batch_size, t.seq_len), t.eval_steps)

    def flops_per_token(self, model, cfg: RunConfig) -> float:
        return flops_per_token(model, cfg.train.seq_len)

    @staticmethod
    def vocabulary(tokenizer) -> dict:
        """The model config's fields the data's tokenizer decides."""
        return {"vocab_size": tokenizer.vocab_size}


class MaskedLM:
    """BERT, RoBERTa, ALBERT: documents, sentence pairs masked at every draw, MLM (+ NSP or SOP) loss; evaluation on
    the same validation pairs and masks every time (a sampler of the validation split with the run's seed)."""

    perplexity_of = "mlm_loss"

    def data(self, cfg: RunConfig, cache_dir: Path, tokenizer: Path | None = None):
        return load_documents(_prepared(cfg, cache_dir, tokenizer, builder=prepare_documents))

    def sampler(self, cfg: RunConfig, data, seed: int, rank: int = 0, world_size: int = 1) -> PretrainingSampler:
        if world_size > 1:
            raise LmforgeError("encoder pretraining runs in one process for now: drop --nproc / torchrun")
        return self._pairs(cfg, data, data.train, seed)

    @staticmethod
    def _pairs(cfg: RunConfig, data, split, seed: int) -> PretrainingSampler:
        return PretrainingSampler(
            split, data.tokenizer, cfg.train.batch_size, cfg.train.seq_len, seed, cfg.model.sentence_objective,
            cfg.data.mlm_probability, cfg.data.whole_word_masking,
        )  # fmt: skip

    loss = staticmethod(pretraining_loss)
    vocabulary = staticmethod(CausalLM.vocabulary)

    def eval_batches(self, cfg: RunConfig, data) -> Iterable | None:
        if data.val.n_documents < (2 if cfg.model.sentence_objective == "nsp" else 1):
            return None
        sampler = self._pairs(cfg, data, data.val, cfg.train.seed)
        return (sampler.next() for _ in range(cfg.train.eval_steps))

    def flops_per_token(self, model, cfg: RunConfig) -> float:
        """6N over the layers (a shared layer counts n_layer times) and the MLM head on its share of the tokens,
        plus attention's 12 * n_layer * d_model * T."""
        c = model.cfg
        layer = sum(p.numel() for p in model.encoder.blocks[0].parameters())
        head = c.d_model * c.embedding_size + c.embedding_size * c.vocab_size
        n = c.n_layer * layer + cfg.data.mlm_probability * head
        if model.embeddings.project is not None:
            n += c.embedding_size * c.d_model
        return 6 * n + 12 * c.n_layer * c.d_model * cfg.train.seq_len


class SpanCorruption:
    """T5: documents back to back, random windows span-corrupted at every draw, the decoder's cross-entropy on the
    targets; evaluation on the same validation windows and spans every time (a sampler with the run's seed).

    The tokenizer (a byte-level BPE or WordPiece trained with encoder special tokens) gets T5's 100 sentinels
    appended after its vocabulary, so the prepared token ids stay as they are."""

    perplexity_of = "loss"
    loss = staticmethod(seq2seq_loss)

    def data(self, cfg: RunConfig, cache_dir: Path, tokenizer: Path | None = None):
        data = load_documents(_prepared(cfg, cache_dir, tokenizer, builder=prepare_documents))
        add_sentinels(data.tokenizer)
        return data

    def sampler(self, cfg: RunConfig, data, seed: int, rank: int = 0, world_size: int = 1) -> SpanCorruptionSampler:
        if world_size > 1:
            raise LmforgeError("T5 pretraining runs in one process for now: drop --nproc / torchrun")
        return self._windows(cfg, data, data.train, seed)

    @staticmethod
    def _windows(cfg: RunConfig, data, split, seed: int) -> SpanCorruptionSampler:
        t = cfg.train
        return SpanCorruptionSampler(split, data.tokenizer, t.batch_size, t.seq_len, seed, cfg.model.decoder_start_id)

    def eval_batches(self, cfg: RunConfig, data) -> Iterable | None:
        if len(data.val.tokens) < 2:
            return None
        sampler = self._windows(cfg, data, data.val, cfg.train.seed)
        return (sampler.next() for _ in range(cfg.train.eval_steps))

    @staticmethod
    def vocabulary(tokenizer) -> dict:
        """The vocabulary and T5's ids: pad (which also starts the decoder) and end of sequence."""
        pad, eos = tokenizer.special_id("pad"), tokenizer.special_id("sep")
        if pad is None or eos is None:
            raise LmforgeError(f"the {tokenizer.kind} tokenizer has no pad or end token for T5: use bpe or wordpiece")
        return {"vocab_size": tokenizer.vocab_size, "pad_id": pad, "decoder_start_id": pad, "eos_id": eos}

    def flops_per_token(self, model, cfg: RunConfig) -> float:
        """Per input token: 6N for the encoder, and for the decoder and LM head on their share of target tokens,
        plus attention's 12 * layers * inner width * the length attended over."""
        c, s = model.cfg, cfg.train.seq_len
        t = corrupted_lengths(raw_length(s))[1]
        encoder = sum(p.numel() for p in model.encoder.parameters())
        decoder = sum(p.numel() for p in model.decoder.parameters()) + c.d_model * c.vocab_size
        inner = c.n_head * c.d_kv
        attention = 12 * inner * (c.n_layer * s + c.n_decoder_layer * (t + s) * t / s)
        return 6 * (encoder + decoder * t / s) + attention


OBJECTIVES = {"gpt": CausalLM(), "bert": MaskedLM(), "t5": SpanCorruption()}
