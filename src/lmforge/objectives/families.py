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
from lmforge.objectives.losses import causal_lm_loss, pretraining_loss


def _prepared(cfg: RunConfig, cache_dir: Path, tokenizer: Path | None, **builder) -> Path:
    """cfg's data prepared with cfg's tokenizer, or with `tokenizer` (a tokenizer.json) when given."""
    d = cfg.data
    return ensure_prepared(
        d.path, str(tokenizer or d.tokenizer), d.vocab_size, d.val_fraction, cache_dir, cfg.train.progress,
        d.lowercase, d.strip_accents, on_bad_line=d.on_bad_line, **builder,
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


OBJECTIVES = {"gpt": CausalLM(), "bert": MaskedLM()}
