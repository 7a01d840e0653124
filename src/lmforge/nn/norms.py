"""Normalization layers: LayerNorm (torch's) and RMSNorm, chosen by name."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean or a bias (T5's LayerNorm).

    The mean square is taken in float32, so half-precision activations normalize as T5 does."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


def make_norm(kind: str, d_model: int, eps: float, bias: bool = True) -> nn.Module:
    """'layer' (LayerNorm, with a bias unless bias=False) or 'rms' (RMSNorm)."""
    if kind == "rms":
        return RMSNorm(d_model, eps)
    if kind == "layer":
        return nn.LayerNorm(d_model, eps=eps, bias=bias)
    raise ValueError(f"norm kind must be 'layer' or 'rms', not {kind!r}")
