"""The encoder-decoder: T5 (relative position biases, RMS pre-norms, no biases; Raffel et al., 2020) and, by
configuration, the original Transformer (sinusoidal positions, post-LayerNorm, biases; Vaswani et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.config import T5Config
from lmforge.nn import Decoder, Encoder, KVCache, RelativePositionBias, SinusoidalPositions


class T5(nn.Module):
    """Shared token embedding -> encoder; decoder (causal self-attention, cross-attention to the encoder) -> LM head.

    With relative positions each stack computes its position bias once and adds it in every layer's
    self-attention; with sinusoidal ones the embeddings (times sqrt(d_model)) get the position's encoding added."""

    family = "t5"

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.relative = cfg.position == "relative"
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        gated = cfg.feed_forward == "gated-gelu"
        block = dict(
            norm=cfg.norm, norm_type=cfg.norm_type, layer_norm_eps=cfg.layer_norm_eps, n_head=cfg.n_head,
            d_ff=cfg.d_ff, dropout=cfg.dropout, bias=cfg.bias, activation="gelu" if gated else "relu",
            d_head=cfg.d_kv, scale_attention=not self.relative, gated=gated,
        )  # fmt: skip
        self.encoder = Encoder(cfg.n_layer, cfg.d_model, **block)
        self.decoder = Decoder(cfg.n_decoder_layer, cfg.d_model, cross_attention=True, **block)
        if self.relative:
            buckets, distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            self.encoder_bias = RelativePositionBias(cfg.n_head, buckets, distance, bidirectional=True)
            self.decoder_bias = RelativePositionBias(cfg.n_head, buckets, distance, bidirectional=False)
        else:
            self.positions = SinusoidalPositions(cfg.max_seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """T5's initialization, which stands in for the 1/sqrt(d_kv) that attention leaves out; the original
        Transformer's (fairseq's): Xavier-uniform matrices, zero biases, embeddings N(0, 1/d_model)."""
        cfg = self.cfg
        if not self.relative:
            for name, p in self.named_parameters():
                if name == "tok_emb.weight" or name == "lm_head.weight":
                    nn.init.normal_(p, std=cfg.d_model**-0.5)
                elif p.dim() == 2:
                    nn.init.xavier_uniform_(p)
                elif name.endswith(".bias"):
                    nn.init.zeros_(p)
            return
        inner = cfg.n_head * cfg.d_kv
        nn.init.normal_(self.tok_emb.weight, std=1.0)
        if not cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=1.0)
        for name, p in self.named_parameters():
            if name.endswith("qkv.weight"):
                nn.init.normal_(p[:inner], std=(cfg.d_model * cfg.d_kv) ** -0.5)
                nn.init.normal_(p[inner:], std=cfg.d_model**-0.5)
            elif name.endswith(("attn.out.weight", "cross.out.weight")):
                nn.init.normal_(p, std=inner**-0.5)
            elif name.endswith(("ffn.up.weight", "ffn.gate.weight", "_bias.embed.weight")):
                nn.init.normal_(p, std=cfg.d_model**-0.5)
            elif name.endswith("ffn.down.weight"):
                nn.init.normal_(p, std=cfg.d_ff**-0.5)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied LM head counts once)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """The decoder's cache: self-attention keys/values of max_len target tokens, cross-attention's once."""
        cfg, p = self.cfg, self.tok_emb.weight
        return KVCache(cfg.n_decoder_layer, batch, cfg.n_head, max_len, cfg.d_kv, p.dtype, p.device)

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The encoder's final hidden states (B, S, d_model) and per-layer attention weights: the family surface
        (T5 has no segments, and its encoder no cache)."""
        if cache is not None:
            raise ValueError("the T5 encoder takes no cache; the decoder's is passed to decode")
        s = input_ids.size(1)
        bias = self.encoder_bias(s, s) if self.relative else None
        x, attentions = self.encoder(
            self._embed(input_ids, 0), attention_mask, need_weights=need_weights, position_bias=bias
        )
        return self.drop(x), attentions

    def _embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Token embeddings of ids (B, T) at positions start.., with sinusoidal encodings added where configured."""
        x = self.tok_emb(ids)
        if not self.relative:
            end = start + ids.size(1)
            if end > self.cfg.max_seq_len:
                raise ValueError(f"position {end - 1} is beyond model.max_seq_len = {self.cfg.max_seq_len}")
            x = x * self.cfg.d_model**0.5 + self.positions.table[start:end]
        return self.drop(x)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, S, d_model) for source ids (B, S); attention_mask (B, S) is 1 for real tokens."""
        return self.hidden(input_ids, attention_mask)[0]

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, vocab_size) for target ids (B, T) after the cached ones, reading the encoder
        output `memory` (B, S, d_model) whose real tokens attention_mask marks."""
        return self.lm_head(self.decoder_hidden(decoder_input_ids, memory, attention_mask, cache))

    def decoder_hidden(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """What the LM head reads (B, T, d_model): the decoder's output, rescaled by d_model ** -0.5 when the head is
        the tied embedding (T5), so a loss can fuse the head with the cross-entropy."""
        start = cache.length if cache is not None else 0
        t = decoder_input_ids.size(1)
        bias = self.decoder_bias(t, start + t, start) if self.relative else None
        x, _ = self.decoder(
            self._embed(decoder_input_ids, start), None, memory, attention_mask, cache, position_bias=bias
        )
        x = self.drop(x)
        if self.cfg.tie_embeddings and self.relative:
            x = x * self.cfg.d_model**-0.5
        return x

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, decoder_input_ids: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) of the target tokens that follow decoder_input_ids (teacher forcing)."""
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20
    ) -> torch.Tensor:
        """Greedy decoding with the caches: (B, 1 + n) ids starting with decoder_start_id; a sequence that has
        produced eos_id continues with pad_id, and decoding stops when every one has."""
        cfg = self.cfg
        memory = self.encode(input_ids, attention_mask)
        b = input_ids.size(0)
        cache = self.new_cache(b, max_new_tokens)
        tokens = torch.full((b, 1), cfg.decoder_start_id, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            step = self.decode(tokens[:, -1:], memory, attention_mask, cache)[:, -1].argmax(-1)
            step = step.masked_fill(done, cfg.pad_id)
            tokens = torch.cat([tokens, step[:, None]], dim=1)
            done |= step == cfg.eos_id
            if done.all():
                break
        return tokens
