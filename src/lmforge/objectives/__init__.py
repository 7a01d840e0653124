"""Pretraining objectives: a batch in, a loss out; and per model family, the data, sampler and loss it trains on."""

from lmforge.objectives.families import OBJECTIVES, CausalLM, MaskedLM, SpanCorruption, flops_per_token
from lmforge.objectives.losses import causal_lm_loss, mlm_loss, pretraining_loss

__all__ = [
    "OBJECTIVES",
    "CausalLM",
    "MaskedLM",
    "SpanCorruption",
    "causal_lm_loss",
    "flops_per_token",
    "mlm_loss",
    "pretraining_loss",
]
