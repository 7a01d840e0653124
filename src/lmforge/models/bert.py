"""BERT, RoBERTa and ALBERT: one bidirectional encoder, the variants set by BertConfig (Devlin et al., 2019;
Liu et al., 2019; Lan et al., 2020).

Module names follow Hugging Face's BertForPreTraining / AlbertForPreTraining so weights map one to one:
embeddings.{word, position, token_type, ln} = bert.embeddings.{word, position, token_type}_embeddings / LayerNorm,
embeddings.project = albert.encoder.embedding_hidden_mapping_in, pooler = bert.pooler.dense,
mlm_head.{dense, ln, bias} = cls.predictions.{transform.dense, transform.LayerNorm, bias} (its decoder is the word
embedding), sentence_head = cls.seq_relationship (NSP) or sop_classifier.classifier (SOP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import BertConfig
from lmforge.models.vocab import grow_table
from lmforge.nn import Encoder, LearnedPositions
from lmforge.nn.feedforward import ACTIVATIONS


class BertEmbeddings(nn.Module):
    """Word + position + segment embeddings, LayerNorm and dropout, all of size embedding_size; when that is smaller
    than d_model (ALBERT's factorization: V x E + E x H parameters instead of V x H) a linear map lifts it."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        e = cfg.embedding_size
        self.word = nn.Embedding(cfg.vocab_size, e)
        self.position = LearnedPositions(cfg.max_seq_len + cfg.position_offset, e)
        self.position_offset = cfg.position_offset
        self.token_type = nn.Embedding(cfg.type_vocab_size, e)
        self.ln = nn.LayerNorm(e, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.project = nn.Linear(e, cfg.d_model) if e != cfg.d_model else None

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        t, start = input_ids.size(1), self.position_offset
        positions = torch.arange(start, start + t, device=input_ids.device)
        x = self.drop(self.ln(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)))
        return x if self.project is None else self.project(x)  # (B, T, d_model)


class MLMHead(nn.Module):
    """The transform (dense + activation + LayerNorm, back to embedding_size); the decoder that follows is the word
    embedding matrix transposed plus this head's own bias, so input and output vocabularies share one table."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.embedding_size)
        self.act = ACTIVATIONS[cfg.activation]
        self.ln = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ln(self.act(self.dense(hidden)))


class Bert(nn.Module):
    """Embeddings -> post-norm encoder -> MLM head at token positions, and pooler -> NSP/SOP head at [CLS]."""

    family = "bert"

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = Encoder(
            cfg.n_layer, cfg.d_model, norm=cfg.norm, layer_norm_eps=cfg.layer_norm_eps,
            share_layers=cfg.share_layers, n_head=cfg.n_head, d_ff=cfg.d_ff, dropout=cfg.dropout,
            activation=cfg.activation,
        )  # fmt: skip
        self.mlm_head = MLMHead(cfg) if cfg.mlm_head else None
        sentence = cfg.sentence_objective != "none"  # RoBERTa has neither pooler nor sentence head
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if sentence else None
        self.sentence_head = nn.Linear(cfg.d_model, 2) if sentence else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """BERT's: every matrix and table N(0, 0.02), biases zero (LayerNorms keep their ones and zeros)."""
        if isinstance(m, (nn.Linear, nn.Embedding, LearnedPositions)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (the tied decoder counts once; shared layers once); optionally without the tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            e = self.embeddings
            n -= e.word.weight.numel() + e.position.weight.numel() + e.token_type.weight.numel()
        return n

    @property
    def input_embeddings(self) -> nn.Embedding:
        """The word table (what integrated gradients interpolates and new tokens grow)."""
        return self.embeddings.word

    @torch.no_grad()
    def add_token_rows(self, token_ids: list[int]) -> None:
        """Grows the vocabulary (and cfg.vocab_size) to hold token_ids: rows at the mean of the others, and their MLM
        bias at 0, as transformers does."""
        n = grow_table(self.embeddings.word, token_ids)
        if self.mlm_head is not None:
            bias = self.mlm_head.bias
            self.mlm_head.bias = nn.Parameter(torch.cat([bias, bias.new_zeros(n - len(bias))]))
        self.cfg.vocab_size = n

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Final hidden states (B, T, d_model) of ids (B, T), a padding mask (B, T; True or 1 = real token) and
        segment ids (0 when left out), and the per-layer attention weights if asked. An encoder reads the whole
        sequence at once, so it takes no cache."""
        if cache is not None:
            raise ValueError("an encoder reads the whole sequence at once: it takes no KV cache")
        if input_ids.size(1) > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {input_ids.size(1)} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, attention_mask, need_weights=need_weights)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., vocab_size) for hidden states (..., d_model); pass only the positions you need."""
        if self.mlm_head is None:
            raise ValueError("this encoder has no MLM head (model.mlm_head is false)")
        return F.linear(self.mlm_head.transform(hidden), self.embeddings.word.weight, self.mlm_head.bias)

    def sentence_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """NSP or SOP logits (B, 2) from the pooled [CLS] state: label 1 = B is not A's continuation / is swapped."""
        return self.sentence_head(torch.tanh(self.pooler(hidden[:, 0])))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MLM logits at every position (B, T, vocab_size), and sentence logits (B, 2); each None without its head."""
        hidden, _ = self.hidden(input_ids, attention_mask, token_type_ids)
        sentence = self.sentence_logits(hidden) if self.sentence_head is not None else None
        return (self.mlm_logits(hidden) if self.mlm_head is not None else None), sentence
