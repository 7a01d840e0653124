"""Causal self-attention in one C kernel (kernels/native.c) for training on CPU: the rotary positions,
the causal softmax and the heads' outputs side by side in one pass over the fused projection, forward and backward.

On char-small's shapes (12 x 4 heads of 64 positions x 32 columns, a 2-core Zen 4) one layer's attention, forward
and backward, took 2.9 ms as torch's chunks, rotations, flash attention and copies, and 0.55 ms in the kernel; a
layer with its products 4.0 -> 3.0 ms, with heads of GPT-2's 256 x 64 (a batch of 8, 12 heads) 205 -> 188 ms. Up to
512 x 64 a head it was measured faster than torch's, at 1024 x 64 tied, so longer rows (and everything else:
padding, a KV cache, attention weights, dropout, autocast, torch.compile) take lmforge.nn.attention's path."""

from __future__ import annotations

import functools
import math

import torch

from lmforge.kernels.native import causal_attention, causal_attention_backward, causal_attention_runs
from lmforge.nn.attention import MultiHeadAttention
from lmforge.nn.positions import RotaryEmbedding

MAX_CELLS = 512 * 64  # positions x columns of a head, up to which the kernel was measured the faster


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos2, sin2, heads: int, scale: float) -> torch.Tensor:
        y, lse = causal_attention(qkv, cos2, sin2, heads, scale)
        ctx.save_for_backward(qkv, cos2, sin2, y, lse)
        ctx.heads, ctx.scale = heads, scale
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor) -> tuple:
        qkv, cos2, sin2, y, lse = ctx.saved_tensors
        grad = causal_attention_backward(qkv, cos2, sin2, y, grad_y.contiguous(), lse, ctx.heads, ctx.scale)
        return grad, None, None, None, None


class Attention(MultiHeadAttention):
    """MultiHeadAttention (same parameters and state-dict keys) whose causal self-attention runs the C kernel where it
    applies; what lmforge.kernels.apply_kernels turns a model's MultiHeadAttention layers into."""

    def self_attention(self, x: torch.Tensor, mask: torch.Tensor | None, rope: RotaryEmbedding | None) -> torch.Tensor:
        if not self._fused(x, mask, rope):
            return super().self_attention(x, mask, rope)
        cos2, sin2, scale = self.kernel_arguments(x.size(1), rope)
        return self.out(_CausalAttention.apply(self.qkv(x).contiguous(), cos2, sin2, self.n_head, scale))

    def kernel_arguments(self, t: int, rope: RotaryEmbedding | None) -> tuple:
        """(cos2, sin2, scale) that the kernel takes for t positions: the rotary tables' first t rows (None without
        rotary positions) and the scores' scale."""
        cos2, sin2 = (rope.cos2[:t], rope.sin2[:t]) if rope is not None else (None, None)
        return cos2, sin2, 1 / math.sqrt(self.d_head) if self.scale else 1.0

    def _fused(self, x: torch.Tensor, mask: torch.Tensor | None, rope: RotaryEmbedding | None) -> bool:
        t = x.size(1) if x.dim() == 3 else 0
        return (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and 1 < t
            and t * self.d_head <= MAX_CELLS
            and self.d_head % 8 == 0
            and (self.dropout == 0 or not self.training)
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
            and (rope is None or rope.cos2.dtype == torch.float32)
            and is_causal(mask, t)
            and causal_attention_runs()
        )


def is_causal(mask: torch.Tensor | None, t: int) -> bool:
    """Whether mask is lmforge.nn.attention.attention_mask's causal mask of t positions, nothing else masked."""
    return mask is not None and mask.shape == (1, 1, t, t) and torch.equal(mask[0, 0], _lower_triangle(t, mask.device))


@functools.lru_cache(maxsize=16)
def _lower_triangle(t: int, device: torch.device) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()
