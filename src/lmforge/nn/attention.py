"""Scaled dot-product attention and multi-head attention (self or cross, with an optional KV cache)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.cache import KVCache
from lmforge.nn.positions import RotaryEmbedding


def attention_mask(
    t: int, s: int, causal: bool, key_padding: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """One boolean mask (True = may attend), broadcastable to (B, n_head, t, s), or None when nothing is masked.

    Causal masks align bottom-right, so the last query sees every key (the case of decoding after a KV cache).
    A row that would be fully masked (a padding query, an all-padding context) sees every key, so it stays finite;
    no real query reads it, since real queries never see padded keys.
    """
    if not causal and key_padding is None:
        return None
    mask = torch.ones(t, s, dtype=torch.bool, device=device)
    if causal:
        mask = mask.tril(s - t)
    mask = mask[None, None]
    if key_padding is not None:  # (B, s), True = real token
        mask = mask & key_padding[:, None, None, :].bool()
    return mask | ~mask.any(dim=-1, keepdim=True)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    bias: torch.Tensor | None = None,
    scale: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(QK^T / sqrt(d_k) + bias) V over (B, n_head, T, d_head) tensors; mask is boolean, True = may attend.

    bias is added to the scores (T5's relative positions); scale=False leaves out 1/sqrt(d_k) (T5 folds it into the
    initialization). The fused kernel runs unless the attention weights are asked for, when the explicit formula runs.
    """
    factor = 1 / math.sqrt(q.size(-1)) if scale else 1.0
    if q.size(2) == 1 and mask is None and bias is None and not need_weights and torch.compiler.is_compiling():
        # one query (a decoding step), compiled: two sums that Inductor fuses with the softmax, where the fused
        # kernel's setup costs 29 us a layer (written as products, Inductor's pattern matcher gives it back)
        weights = ((q * factor) * k).sum(-1, keepdim=True).softmax(dim=-2)  # (B, n_head, S, 1)
        return (weights * v).sum(-2, keepdim=True), None
    if not need_weights:
        if bias is not None:
            mask = bias.to(q.dtype) if mask is None else bias.to(q.dtype).masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=factor), None
    scores = (q @ k.transpose(-2, -1)) * factor  # (B, n_head, T, S)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = F.dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v
    return out, weights


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with one fused QKV projection and an optional KV cache.

    Cross-attention takes queries from x and keys/values from context, using the same fused weight split in two.
    d_head defaults to d_model / n_head; T5 sets it apart (n_head * d_head need not be d_model). scale=False leaves
    out the 1/sqrt(d_head) of the scores (T5).
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        dropout: float = 0.0,
        bias: bool = True,
        d_head: int | None = None,
        scale: bool = True,
    ):
        super().__init__()
        if d_head is None and d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head, self.d_head, self.dropout = n_head, d_head or d_model // n_head, dropout
        self.scale = scale
        inner = n_head * self.d_head
        self.qkv = nn.Linear(d_model, 3 * inner, bias=bias)
        self.out = nn.Linear(inner, d_model, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.d_head).transpose(1, 2)  # (B, n_head, T, d_head)

    def _project(self, x: torch.Tensor, context: torch.Tensor | None, cache: KVCache | None, layer: int):
        if context is None:
            return tuple(self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        d = self.out.in_features
        q = _outputs(self.qkv, x, slice(0, d))
        if cache is not None and layer in cache.cross:
            k, v = cache.cross[layer]
        else:
            kv = _outputs(self.qkv, context, slice(d, None))
            k, v = (self._heads(t) for t in kv.chunk(2, dim=-1))
            if cache is not None:
                cache.cross[layer] = (k, v)
        return self._heads(q), k, v

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        rope: RotaryEmbedding | None = None,
        need_weights: bool = False,
        position_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (B, T, d_model); context: (B, S, d_model) for cross-attention; position_bias: (1, n_head, T, S)
        if context is None and cache is None and position_bias is None and not need_weights:
            return self.self_attention(x, mask, rope), None
        q, k, v = self._project(x, context, cache, layer)
        if context is None:
            if rope is not None:
                positions = cache.positions(q.size(2), q.device) if cache is not None else 0
                q, k = rope(q, positions), rope(k, positions)
            if cache is not None:
                k, v = cache.update(layer, k, v)
        return self._attend(q, k, v, mask, need_weights, position_bias)

    def self_attention(self, x: torch.Tensor, mask: torch.Tensor | None, rope: RotaryEmbedding | None) -> torch.Tensor:
        """Self-attention with no cache, bias or weights asked for: a training step's (lmforge.kernels.attention runs
        its causal case in one C kernel)."""
        q, k, v = self._project(x, None, None, 0)
        if rope is not None:
            q, k = rope(q), rope(k)
        return self._attend(q, k, v, mask, False, None)[0]

    def _attend(self, q, k, v, mask, need_weights: bool, bias) -> tuple[torch.Tensor, torch.Tensor | None]:
        dropout = self.dropout if self.training else 0.0
        y, weights = scaled_dot_product_attention(q, k, v, mask, dropout, need_weights, bias, self.scale)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), weights

    def forward_packed(self, x: torch.Tensor, index: torch.Tensor, shape: tuple[int, int], mask: torch.Tensor):
        """Self-attention over packed tokens: x (N, d_model) holds the real tokens of a (B, T) batch at the flat
        positions `index`. The projections run on the N rows only; attention itself runs padded, with the mask."""
        b, t = shape
        qkv = self.qkv(x)  # (N, 3 * d_model)
        padded = qkv.new_zeros(b * t, qkv.size(-1)).index_copy(0, index, qkv).view(b, t, -1)
        q, k, v = (self._heads(z) for z in padded.chunk(3, dim=-1))
        dropout = self.dropout if self.training else 0.0
        y, _ = scaled_dot_product_attention(q, k, v, mask, dropout, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(b * t, -1).index_select(0, index))


def _outputs(layer: nn.Module, x: torch.Tensor, rows: slice) -> torch.Tensor:
    """layer(x)[..., rows], computing only those outputs: from a slice of an nn.Linear's weight; a quantized layer
    (lmforge.kernels: int8, bf16) slices its own weights in its `rows`."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight[rows], None if layer.bias is None else layer.bias[rows])
    return layer.rows(x, rows)
