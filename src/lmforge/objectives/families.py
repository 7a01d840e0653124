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
from lmforge.data.parallel import prepare_parallel, special_ids
from lmforge.data.sampler import PairBatchSampler, pair_batches
from lmforge.errors import LmforgeError
from lmforge.objectives.losses import causal_lm_loss, pretraining_loss, seq2seq_loss
from lmforge.objectives.permutation import PermutationSampler, num_predict, permutation_lm_loss
from lmforge.objectives.span_corruption import (
    SpanCorruptionSampler,
    add_sentinels,
    corrupted_lengths,
    raw_length,
)

EVAL_TOKENS = 16384  # an evaluation batch's least token count: without gradients its activations are a training step's


def _prepared(cfg: RunConfig, cache_dir: Path, tokenizer: Path | None, **builder) -> Path:
    """cfg's data prepared with cfg's tokenizer, or with `tokenizer` (a tokenizer.json) when given."""
    d = cfg.data
    return ensure_prepared(
        d.path, str(tokenizer or d.tokenizer), d.vocab_size, d.val_fraction, cache_dir, cfg.train.progress,
        d.lowercase, d.strip_accents, on_bad_line=d.on_bad_line, started_with=tokenizer and d.tokenizer,
        redact_pii=d.redact_pii, dedup=d.dedup, dedup_threshold=d.dedup_threshold, **builder,
    )  # fmt: skip


def flops_per_token(model, seq_len: int) -> float:
    """GPT: 6N for the matrices plus 12 * n_layer * d_model * T for attention (PaLM appendix B, nanoGPT)."""
    c = model.cfg
    n = model.num_parameters(exclude_embeddings=True)
    if c.tie_embeddings:  # the LM head's matmul runs whether or not its weight is shared
        n += c.d_model * c.vocab_size
    return 6 * n + 12 * c.n_layer * c.d_model * seq_len


def block_tokens(cfg: RunConfig, sampler) -> float:
    """Tokens per batch of the samplers that draw batch_size blocks of seq_len tokens."""
    return cfg.train.batch_size * cfg.train.seq_len


class CausalLM:
    """GPT: one packed token stream, random blocks, next-token loss; evaluation on consecutive validation blocks."""

    perplexity_of = "loss"
    tokens_per_batch = staticmethod(block_tokens)

    def data(self, cfg: RunConfig, cache_dir: Path, tokenizer: Path | None = None):
        return load_prepared(_prepared(cfg, cache_dir, tokenizer))

    def sampler(self, cfg: RunConfig, data, seed: int, rank: int = 0, world_size: int = 1) -> BatchSampler:
        return BatchSampler(data.train, cfg.train.batch_size, cfg.train.seq_len, seed, rank, world_size)

    @staticmethod
    def loss(model, batch) -> tuple[torch.Tensor, dict]:
        return causal_lm_loss(model, *batch), {}

    def eval_batches(self, cfg: RunConfig, data) -> Iterable | None:
        """The first eval_steps x batch_size validation blocks, in batches of at least EVAL_TOKENS tokens: the same
        mean as eval_steps training-size batches, in fewer and larger products (char-small's 20 batches of 768
        tokens: 332 -> 239 ms an evaluation on a 2-core Zen 4)."""
        t = cfg.train
        if len(data.val) < t.seq_len + 1:
            return None
        blocks = t.eval_steps * t.batch_size
        return iter_eval_blocks(
            data.val[: blocks * t.seq_len + 1], max(t.batch_size, EVAL_TOKENS // t.seq_len), t.seq_len
        )

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
    tokens_per_batch = staticmethod(block_tokens)

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


def encoder_decoder_flops(model, source_len: float, target_len: float) -> float:
    """Training FLOPs per (source + target) token: 6N for the encoder on source tokens and for the decoder and LM
    head on target tokens, plus attention's 12 * layers * inner width * the length attended over."""
    c = model.cfg
    encoder = sum(p.numel() for p in model.encoder.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters()) + c.d_model * c.vocab_size
    inner, s, t = c.n_head * c.d_kv, source_len, target_len
    attention = 12 * inner * (c.n_layer * s * s + c.n_decoder_layer * t * (t + s))
    return (6 * (encoder * s + decoder * t) + attention) / (s + t)


class SpanCorruption:
    """T5: documents back to back, random windows span-corrupted at every draw, the decoder's cross-entropy on the
    targets; evaluation on the same validation windows and spans every time (a sampler with the run's seed).

    The tokenizer (a byte-level BPE or WordPiece trained with encoder special tokens) gets T5's 100 sentinels
    appended after its vocabulary, so the prepared token ids stay as they are."""

    perplexity_of = "loss"
    loss = staticmethod(seq2seq_loss)
    tokens_per_batch = staticmethod(block_tokens)

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
        pad, eos = special_ids(tokenizer)
        return {"vocab_size": tokenizer.vocab_size, "pad_id": pad, "decoder_start_id": pad, "eos_id": eos}

    def flops_per_token(self, model, cfg: RunConfig) -> float:
        """Per input token (the throughput counts input tokens): the encoder-decoder's FLOPs over source and target."""
        s = cfg.train.seq_len
        t = corrupted_lengths(raw_length(s))[1]
        return encoder_decoder_flops(model, s, t) * (s + t) / s


class Seq2Seq:
    """Sequence-to-sequence on parallel data (translation): sentence pairs tokenized once with a tokenizer shared by
    both sides, batched by length, the decoder's label-smoothed cross-entropy; evaluation on the validation pairs.

    The model's pad id starts the decoder, as in T5; every source and target ends with the end-of-sequence id."""

    perplexity_of = "nll"

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing
        self.lengths = (1.0, 1.0)  # the mean source and target lengths of the training pairs

    def data(self, cfg: RunConfig, cache_dir: Path, tokenizer: Path | None = None):
        d = cfg.data
        data = prepare_parallel(
            d.path, d.source, d.target, tokenizer or d.tokenizer, d.vocab_size, cfg.model.max_seq_len, cache_dir,
            cfg.train.progress, started_with=tokenizer and d.tokenizer,
        )  # fmt: skip
        self.lengths = tuple(float(x.mean()) for x in data.train.lengths())
        return data

    def sampler(self, cfg: RunConfig, data, seed: int, rank: int = 0, world_size: int = 1) -> PairBatchSampler:
        if world_size > 1:
            raise LmforgeError("sequence-to-sequence training runs in one process for now: drop --nproc / torchrun")
        t, m = cfg.train, cfg.model
        return PairBatchSampler(data.train, t.batch_tokens, t.batch_size, m.pad_id, m.decoder_start_id, seed)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        return seq2seq_loss(model, batch, self.label_smoothing)

    def eval_batches(self, cfg: RunConfig, data) -> Iterable | None:
        if data.val is None or len(data.val) == 0:
            return None
        t, m = cfg.train, cfg.model
        batches = pair_batches(data.val, t.batch_tokens, t.batch_size, m.pad_id, m.decoder_start_id)
        return itertools.islice(batches, t.eval_steps)

    vocabulary = staticmethod(SpanCorruption.vocabulary)

    def flops_per_token(self, model, cfg: RunConfig) -> float:
        return encoder_decoder_flops(model, *self.lengths)

    @staticmethod
    def tokens_per_batch(cfg: RunConfig, sampler: PairBatchSampler) -> float:
        return sampler.tokens_per_batch


class PermutationLM:
    """XLNet: documents back to back (a Unigram or BPE tokenizer with the encoder's special tokens, which fine-tuning's
    <sep> and <cls> need), random windows given a new factorization order at every draw, the query stream's
    cross-entropy on the last 1/K of each order; evaluation on the same validation windows and orders every time."""

    perplexity_of = "loss"
    loss = staticmethod(permutation_lm_loss)
    tokens_per_batch = staticmethod(block_tokens)
    vocabulary = staticmethod(CausalLM.vocabulary)

    def data(self, cfg: RunConfig, cache_dir: Path, tokenizer: Path | None = None):
        data = load_documents(_prepared(cfg, cache_dir, tokenizer, builder=prepare_documents))
        if data.tokenizer.cls_id is None or data.tokenizer.sep_id is None:
            raise LmforgeError(
                f"data.tokenizer = {cfg.data.tokenizer} has no <cls> or <sep> for an XLNet to fine-tune with: use "
                "unigram or bpe"
            )
        return data

    def sampler(self, cfg: RunConfig, data, seed: int, rank: int = 0, world_size: int = 1) -> PermutationSampler:
        if world_size > 1:
            raise LmforgeError("XLNet pretraining runs in one process for now: drop --nproc / torchrun")
        return self._windows(cfg, data.train, seed)

    @staticmethod
    def _windows(cfg: RunConfig, split, seed: int) -> PermutationSampler:
        m = cfg.model
        return PermutationSampler(split.tokens, cfg.train.batch_size, cfg.train.seq_len, seed, m.predict_fraction_k,
                                  m.span_prediction, m.max_span)  # fmt: skip

    def eval_batches(self, cfg: RunConfig, data) -> Iterable | None:
        if len(data.val.tokens) < 2:
            return None
        sampler = self._windows(cfg, data.val, cfg.train.seed)
        return (sampler.next() for _ in range(cfg.train.eval_steps))

    def flops_per_token(self, model, cfg: RunConfig) -> float:
        """Per input token: 6N over the blocks for the content stream, the query stream's share (its q, output and
        feed-forward on the predicted tokens), the relative-position projection over 2T distances, the LM head on
        the predicted tokens; attention 3 x 2 d_model (T keys + 2T distances + T values) per layer and query."""
        c, t = model.cfg, cfg.train.seq_len
        share = num_predict(t, c.predict_fraction_k) / t
        layer = sum(p.numel() for p in model.blocks[0].parameters())
        kvr = 3 * c.d_model * c.d_model  # k, v and r: the query stream reuses the content stream's keys and values
        n = c.n_layer * (layer + share * (layer - kvr) + 2 * c.d_model * c.d_model) + share * c.d_model * c.vocab_size
        return 6 * n + 24 * c.n_layer * c.d_model * t * (1 + share)


OBJECTIVES = {"gpt": CausalLM(), "bert": MaskedLM(), "t5": SpanCorruption(), "xlnet": PermutationLM()}


def objective_for(cfg: RunConfig):
    """What cfg trains on: its family's objective, or sequence-to-sequence when the data names a source and target."""
    if cfg.data.source is not None:
        if cfg.family != "t5":
            raise LmforgeError(
                f"--source/--target train an encoder-decoder; a {cfg.family} model does not translate: use "
                "--config transformer-mt or t5-small"
            )
        return Seq2Seq(cfg.train.label_smoothing)
    return OBJECTIVES[cfg.family]
