"""GPT: a decoder-only Transformer trained to predict the next token (Radford et al., 2018, 2019)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.config import GPTConfig
from lmforge.generation.decoding import generate
from lmforge.models.vocab import grow_table, grown
from lmforge.nn import Decoder, KVCache, LearnedPositions, RotaryEmbedding, SinusoidalPositions


class GPT(nn.Module):
    """Token embedding + positions -> causal decoder stack -> LM head (tied to the token embedding by default)."""

    family = "gpt"  # the config family; also how task data is laid out (a causal model has no [CLS])

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        positions = {"learned": LearnedPositions, "sinusoidal": SinusoidalPositions}.get(cfg.position)
        self.pos_emb = positions(cfg.max_seq_len, cfg.d_model) if positions else None
        d_head = cfg.d_model // cfg.n_head
        self.rope = RotaryEmbedding(d_head, cfg.max_seq_len) if cfg.position == "rotary" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = Decoder(
            cfg.n_layer, cfg.d_model, norm=cfg.norm, layer_norm_eps=cfg.layer_norm_eps, n_head=cfg.n_head,
            d_ff=cfg.d_ff, dropout=cfg.dropout, bias=cfg.bias, activation=cfg.activation,
        )  # fmt: skip
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
            if name.endswith(("attn.out.weight", "ffn.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, LearnedPositions):
            nn.init.normal_(m.weight, std=0.01)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied LM head counts once); optionally without the embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if isinstance(self.pos_emb, LearnedPositions):
                n -= self.pos_emb.weight.numel()
        return n

    @torch.no_grad()
    def add_token_rows(self, token_ids: list[int]) -> None:
        """Grows the vocabulary (and cfg.vocab_size) to hold token_ids, their rows at the mean of the others."""
        n = grow_table(self.tok_emb, token_ids)
        self.lm_head.weight = (
            self.tok_emb.weight if self.cfg.tie_embeddings else grown(self.lm_head.weight, n, token_ids)
        )
        self.lm_head.out_features = n
        self.cfg.vocab_size = n

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        cfg, p = self.cfg, self.tok_emb.weight
        max_len = max_len or cfg.max_seq_len
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head, p.dtype, p.device)

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The token table (what integrated gradients interpolates and new tokens grow)."""
        return self.tok_emb

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Final hidden states (B, T, d_model) for token ids (B, T), and per-layer attention weights if asked.

        The signature every family shares; a GPT has no segments, so token_type_ids is ignored."""
        start = cache.length if cache is not None else 0
        t = input_ids.size(1)
        if start + t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            positions = cache.positions(t, input_ids.device) if cache is not None else torch.arange(t, device=x.device)
            x = x + self.pos_emb(positions)
        return self.decoder(self.drop(x), attention_mask, cache=cache, rope=self.rope, need_weights=need_weights)

    def forward(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Next-token logits (B, T, vocab_size)."""
        return self.lm_head(self.hidden(idx, attention_mask, cache=cache)[0])

    generate = generate
