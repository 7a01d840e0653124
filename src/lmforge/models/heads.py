"""Task heads on a pretrained backbone (any family's `hidden`): sequence classification, token classification,
relation classification from entity markers, and extractive QA's span logits.

Like Hugging Face's BertForSequenceClassification / BertForTokenClassification: dropout, then one linear layer; a
BERT's [CLS] state goes through a pooler (tanh(W h + b)): the backbone's pretrained one, else the head's own (as
transformers adds a fresh one to an encoder saved without it). A GPT sees only the tokens before it, so it
classifies from its last real token; so does an XLNet, whose <cls> comes last (XLNet's "last" summary). Relation
classification reads the final states at the entity start markers (Baldini Soares et al., 2019); QA has a start and
an end logit per token (BertForQuestionAnswering's qa_outputs).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.bert import Bert
from lmforge.models.gpt import GPT

POOLINGS = ("cls", "mean", "last")


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
        if pooling == "cls" and backbone.family in ("gpt", "xlnet"):  # an XLNet's <cls> is its last token
            raise ValueError(
                f"a {backbone.family} model has no [CLS] token first: pool its last token ('last') or the mean"
            )
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
        hidden, _ = self.backbone.hidden(input_ids, attention_mask, token_type_ids)
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
        hidden, _ = self.backbone.hidden(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.drop(hidden))


class EntityPairClassifier(nn.Module):
    """A relation label from the final states at the [E1] and [E2] markers, concatenated: "entity start" in
    Baldini Soares et al. (2019), their best representation."""

    def __init__(self, backbone: GPT | Bert, n_labels: int, markers: list[int]):
        super().__init__()
        self.backbone, self.e1_id, self.e2_id = backbone, markers[0], markers[2]
        self.drop = nn.Dropout(backbone.cfg.dropout)
        self.classifier = _linear(2 * backbone.cfg.d_model, n_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, n_labels); every row holds one [E1] and one [E2]."""
        hidden, _ = self.backbone.hidden(input_ids, attention_mask, token_type_ids)
        rows = torch.arange(len(input_ids), device=input_ids.device)
        e1 = (input_ids == self.e1_id).int().argmax(1)
        e2 = (input_ids == self.e2_id).int().argmax(1)
        return self.classifier(self.drop(torch.cat([hidden[rows, e1], hidden[rows, e2]], -1)))  # (B, n_labels)


class SpanExtractor(nn.Module):
    """A start and an end logit for every token (qa_outputs); padding gets the lowest logit, so its probability is 0
    and a softmax over a row is over the real tokens."""

    def __init__(self, backbone: GPT | Bert):
        super().__init__()
        self.backbone = backbone
        self.qa_outputs = _linear(backbone.cfg.d_model, 2)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, 2, T): row 0 the start, row 1 the end; cross-entropy over (2B, T) averages the two losses."""
        hidden, _ = self.backbone.hidden(input_ids, attention_mask, token_type_ids)
        logits = self.qa_outputs(hidden).transpose(1, 2)
        return logits.masked_fill(~attention_mask.bool()[:, None], torch.finfo(logits.dtype).min)
