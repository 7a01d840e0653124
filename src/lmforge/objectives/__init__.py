"""Pretraining objectives: a batch in, a loss out; and per model family, the data, sampler and loss it trains on."""

from lmforge.objectives.families import (
    OBJECTIVES,
    CausalLM,
    MaskedLM,
    PermutationLM,
    Seq2Seq,
    SpanCorruption,
    flops_per_token,
    objective_for,
)
from lmforge.objectives.losses import causal_lm_loss, mlm_loss, pretraining_loss, seq2seq_loss

__all__ = [
    "OBJECTIVES",
    "CausalLM",
    "MaskedLM",
    "PermutationLM",
    "Seq2Seq",
    "SpanCorruption",
    "causal_lm_loss",
    "flops_per_token",
    "mlm_loss",
    "objective_for",
    "pretraining_loss",
    "seq2seq_loss",
]
