"""Positional information: sinusoidal and learned absolute encodings, rotary embeddings (RoPE) and T5's relative
position bias."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(max_seq_len: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)) (Vaswani et al., 2017).

    Computed in fp64 on the CPU, then placed on the default device: a meta device (`lmforge estimate`) has no values
    to compute, and a GPU may lack fast fp64."""
    pos = torch.arange(max_seq_len, dtype=torch.float64, device="cpu")[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64, device="cpu") / d_model)
    table = torch.zeros(max_seq_len, d_model, dtype=torch.float64, device="cpu")
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)[:, : d_model // 2]
    return table.float().to(torch.get_default_device())


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos encodings: no parameters, and defined for any position up to max_seq_len."""

    def __init__(self, max_seq_len: int, d_model: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_seq_len, d_model), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]


class LearnedPositions(nn.Module):
    """One trained vector per position (GPT-2, BERT)."""

    def __init__(self, max_seq_len: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_seq_len, d_model))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.weight[positions]


class RotaryEmbedding(nn.Module):
    """Rotates query/key pairs by position-dependent angles, so attention scores depend on relative position."""

    def __init__(self, d_head: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        # in fp64 on the CPU, then on the default device, as sinusoidal_table
        inv_freq = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64, device="cpu") / d_head)
        angles = torch.arange(max_seq_len, dtype=torch.float64, device="cpu")[:, None] * inv_freq  # (T, d_head/2)
        cos, sin = angles.cos().float(), angles.sin().float()
        # over the whole head: (x1, x2) -> (x1, x2) * [cos, cos] + (x2, x1) * [-sin, sin], three operations, not seven
        tables = {"cos": cos, "sin": sin, "cos2": torch.cat((cos, cos), dim=-1), "sin2": torch.cat((-sin, sin), dim=-1)}
        for name, table in tables.items():
            self.register_buffer(name, table.to(torch.get_default_device()), persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        # x: (B, n_head, T, d_head); start: the first position, or the (T,) / (B, T) positions (a row each: serving)
        # rotates the halves (x1, x2) as in GPT-NeoX / LLaMA
        if isinstance(start, int):
            cos, sin = self.cos2[start : start + x.size(-2)], self.sin2[start : start + x.size(-2)]
        else:
            cos, sin = self.cos2[start], self.sin2[start]
            if start.dim() == 2:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d_head): the same for every head
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int):
    """T5's buckets for key - query offsets: exact for small offsets, logarithmic up to max_distance, one bucket
    beyond; bidirectional buckets keep the sign (half the buckets each), causal ones see only the past."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned scalar per head and bucket of relative offset, added to the attention scores (Raffel et al., 2020).

    Computed once per forward pass and shared by every layer of a stack, as T5 does."""

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.embed = nn.Embedding(num_buckets, n_head)

    def forward(self, t: int, s: int, start: int = 0) -> torch.Tensor:
        """The bias (1, n_head, t, s) for queries at positions start..start+t-1 over keys at 0..s-1."""
        device = self.embed.weight.device
        query = torch.arange(start, start + t, device=device)[:, None]
        key = torch.arange(s, device=device)[None, :]
        buckets = relative_position_bucket(key - query, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embed(buckets).permute(2, 0, 1)[None]  # (1, n_head, t, s)
