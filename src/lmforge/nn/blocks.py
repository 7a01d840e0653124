"""Transformer blocks and stacks: one block serves encoder, causal decoder and encoder-decoder layers."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.nn.attention import MultiHeadAttention, attention_mask
from lmforge.nn.cache import KVCache
from lmforge.nn.feedforward import FeedForward
from lmforge.nn.norms import make_norm
from lmforge.nn.positions import RotaryEmbedding


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention and a feed-forward network, each in a residual + LayerNorm.

    norm="pre" normalizes each sublayer's input (GPT-2, stable for deep stacks); norm="post" normalizes after the
    residual sum (the original Transformer, BERT). T5 sets norm_type="rms", d_head apart from d_model / n_head,
    scale_attention=False and gated (v1.1), and passes a position_bias to self-attention.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        d_ff: int,
        dropout: float = 0.0,
        bias: bool = True,
        activation: str = "gelu",
        norm: str = "pre",
        cross_attention: bool = False,
        layer_norm_eps: float = 1e-5,
        norm_type: str = "layer",
        d_head: int | None = None,
        scale_attention: bool = True,
        gated: bool = False,
    ):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', not {norm!r}")
        self.pre_norm = norm == "pre"
        attention = dict(dropout=dropout, bias=bias, d_head=d_head, scale=scale_attention)
        self.attn = MultiHeadAttention(d_model, n_head, **attention)
        self.ln_attn = make_norm(norm_type, d_model, layer_norm_eps, bias)
        self.cross = MultiHeadAttention(d_model, n_head, **attention) if cross_attention else None
        self.ln_cross = make_norm(norm_type, d_model, layer_norm_eps, bias) if cross_attention else None
        self.ffn = FeedForward(d_model, d_ff, activation, bias, gated)
        self.ln_ffn = make_norm(norm_type, d_model, layer_norm_eps, bias)
        self.drop = nn.Dropout(dropout)

    def _residual(self, x: torch.Tensor, norm: nn.Module, sublayer) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, weights = sublayer(norm(x) if self.pre_norm else x)
        x = x + (self.drop(h) if self.training else h)  # no Dropout call at inference, where every call counts
        return (x if self.pre_norm else norm(x)), weights

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        rope: RotaryEmbedding | None = None,
        need_weights: bool = False,
        position_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, weights = self._residual(
            x, self.ln_attn, lambda h: self.attn(h, mask, None, cache, layer, rope, need_weights, position_bias)
        )
        if self.cross is not None:
            if context is None:
                raise ValueError("this block has cross-attention and needs the encoder output as context")
            x, _ = self._residual(
                x, self.ln_cross, lambda h: self.cross(h, context_mask, context, cache, layer, None, False)
            )
        x, _ = self._residual(x, self.ln_ffn, lambda h: (self.ffn(h), None))
        return x, weights

    def forward_packed(
        self, x: torch.Tensor, index: torch.Tensor, shape: tuple[int, int], mask: torch.Tensor
    ) -> torch.Tensor:
        """The block on packed tokens (N, d_model), padding left out (see TransformerStack.forward)."""
        x, _ = self._residual(x, self.ln_attn, lambda h: (self.attn.forward_packed(h, index, shape, mask), None))
        x, _ = self._residual(x, self.ln_ffn, lambda h: (self.ffn(h), None))
        return x


class TransformerStack(nn.Module):
    """n_layer blocks; a pre-norm stack ends with a final LayerNorm, since its blocks leave the residual raw.

    share_layers=True holds one block and applies it n_layer times (ALBERT's cross-layer parameter sharing).
    """

    causal = False

    def __init__(
        self,
        n_layer: int,
        d_model: int,
        *,
        norm: str = "pre",
        layer_norm_eps: float = 1e-5,
        norm_type: str = "layer",
        share_layers: bool = False,
        **block,
    ):
        super().__init__()
        self.n_layer = n_layer
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, norm=norm, layer_norm_eps=layer_norm_eps, norm_type=norm_type, **block)
            for _ in range(1 if share_layers else n_layer)
        )
        bias = block.get("bias", True)
        self.ln_final = make_norm(norm_type, d_model, layer_norm_eps, bias) if norm == "pre" else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        rope: RotaryEmbedding | None = None,
        need_weights: bool = False,
        position_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """x: (B, T, d_model). padding_mask: (B, S) with True for real tokens, S counting cached tokens too.
        position_bias: (1, n_head, T, S), added to every layer's self-attention scores (computed once: T5).

        A padded batch without cache, context, rotary positions or attention weights runs packed: every layer but
        attention sees only the real tokens, so padding costs (almost) nothing; padding positions come out zero."""
        t = x.size(1)
        s = t + (cache.length if cache is not None else 0)
        if cache is not None and padding_mask is None:
            padding_mask = cache.key_padding(t)  # rows of different lengths (serving) see only their own past
        mask = attention_mask(t, s, self.causal and t > 1, padding_mask, x.device)
        context_mask = None
        if context_padding_mask is not None:
            context_mask = attention_mask(t, context.size(1), False, context_padding_mask, x.device)
        plain = cache is None and context is None and rope is None and position_bias is None and not need_weights
        if padding_mask is not None and plain:
            if not padding_mask.all():
                return self._forward_packed(x, padding_mask, mask)
        x, attentions = self.layers(x, mask, context, context_mask, cache, rope, need_weights, position_bias)
        if cache is not None:
            cache.advance(t)
        return x, attentions

    def layers(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        cache: KVCache | None,
        rope: RotaryEmbedding | None,
        need_weights: bool,
        position_bias: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Every block and the final norm: the part of forward with no data-dependent shape, which
        lmforge.kernels.compile_layers compiles."""
        attentions = []
        for i in range(self.n_layer):
            block = self.blocks[i % len(self.blocks)]
            x, weights = block(x, mask, context, context_mask, cache, i, rope, need_weights, position_bias)
            attentions.append(weights)
        return self.ln_final(x), attentions

    def _forward_packed(
        self, x: torch.Tensor, padding_mask: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[None]]:
        b, t, d = x.shape
        index = padding_mask.flatten().nonzero().squeeze(1)  # (N,) flat positions of the real tokens
        h = self.packed_layers(x.reshape(b * t, d).index_select(0, index), index, b, t, mask)  # (N, d_model)
        out = x.new_zeros(b * t, d).index_copy(0, index, h)
        return out.view(b, t, d), [None] * self.n_layer

    def packed_layers(self, h: torch.Tensor, index: torch.Tensor, b: int, t: int, mask: torch.Tensor) -> torch.Tensor:
        """layers on packed tokens h (N, d_model) that sit at the flat positions index of a (b, t) batch."""
        for i in range(self.n_layer):
            h = self.blocks[i % len(self.blocks)].forward_packed(h, index, (b, t), mask)
        return self.ln_final(h)


class Encoder(TransformerStack):
    """Bidirectional stack: every position attends to every non-padding position."""


class Decoder(TransformerStack):
    """Causal stack: position t attends to positions <= t only; with cross_attention=True it also reads an encoder."""

    causal = True
