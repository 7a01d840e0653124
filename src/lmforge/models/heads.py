"""Task heads on a pretrained backbone (a GPT or a Bert): sequence classification and token classification.

Like Hugging Face's BertForSequenceClassification / BertForTokenClassification: dropout, then one linear layer; a
BERT's [CLS] state goes through a pooler (tanh(W h + b)): the backbone's pretrained one, else the head's own (as
transformers adds a fresh one to an encoder saved without it). A GPT sees only the tokens before it, so it
classifies from its last real token.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.bert import Bert
from lmforge.models.gpt import GPT

POOLINGS = ("cls", "mean", "last")


def backbone_hidden(
    backbone: GPT | Bert,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    need_weights: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Final hidden states (B, T, d_model) of either family, and per-layer attention weights if asked."""
    if isinstance(backbone, Bert):
        return backbone.hidden(input_ids, token_type_ids, attention_mask, need_weights)
    return backbone.hidden(input_ids, attention_mask, None, need_weights)


def _linear(d_model: int, n_labels: int) -> nn.Linear:
    layer = nn.Linear(d_model, n_labels)
    nn.init.normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class SequenceClassifier(nn.Module):
    """One label per sequence from a pooled representation: [CLS] (through the pooler), the mean of the real
    tokens, or the last real token (the only one a causal model has read the whole text at)."""

    def __init__(self, backbone: GPT | Bert, n_labels: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        if pooling == "cls" and isinstance(backbone, GPT):
            raise ValueError("a GPT has no [CLS] token: pool its last token ('last') or the mean ('mean')")
        self.backbone, self.pooling = backbone, pooling
        own = pooling == "cls" and getattr(backbone, "pooler", False) is None  # an encoder without one (RoBERTa)
        self.pooler = _linear(backbone.cfg.d_model, backbone.cfg.d_model) if own else None
        self.drop = nn.Dropout(backbone.cfg.dropout)
        self.classifier = _linear(backbone.cfg.d_model, n_labels)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, d_model)."""
        if self.pooling == "cls":
            pooler = self.backbone.pooler or self.pooler
            return torch.tanh(pooler(hidden[:, 0]))
        mask = attention_mask.to(hidden.dtype)
        if self.pooling == "mean":
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        last = attention_mask.long().sum(1).clamp(min=1) - 1  # right padding: the last real token
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, n_labels) for ids (B, T), a padding mask (B, T; True = real token) and segment ids."""
        hidden, _ = backbone_hidden(self.backbone, input_ids, attention_mask, token_type_ids)
        return self.classifier(self.drop(self.pool(hidden, attention_mask)))


class TokenClassifier(nn.Module):
    """One label per token (NER): dropout and a linear layer on every final hidden state."""

    def __init__(self, backbone: GPT | Bert, n_labels: int):
        super().__init__()
        self.backbone = backbone
        self.drop = nn.Dropout(backbone.cfg.dropout)
        self.classifier = _linear(backbone.cfg.d_model, n_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, n_labels)."""
        hidden, _ = backbone_hidden(self.backbone, input_ids, attention_mask, token_type_ids)
        return self.classifier(self.drop(hidden))
