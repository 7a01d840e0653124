"""Training objectives: a batch in, a scalar loss out."""

from __future__ import annotations

import torch

from lmforge.nn import linear_cross_entropy


def causal_lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; the LM head and the loss are fused so the vocabulary logits are never stored."""
    hidden, _ = model.hidden(x)
    return linear_cross_entropy(hidden, model.lm_head.weight, y)
