"""Position-wise feed-forward network: the same two-layer MLP applied at every position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": lambda x: F.gelu(x, approximate="tanh"), "gelu_exact": F.gelu, "relu": F.relu}


class FeedForward(nn.Module):
    """FFN(x) = W2 act(W1 x + b1) + b2, with d_ff hidden units (usually 4 * d_model).

    gated=True is the gated variant (Shazeer, 2020; T5 v1.1): W2 (act(W_gate x) * W1 x)."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True, gated: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.activation, self.act = activation, ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))
