"""Heads for information extraction: relation classification from the entity start markers (Baldini Soares et al.,
2019) and extractive QA's start/end logits (transformers' BertForQuestionAnswering), and room in the vocabulary for
the markers."""

from __future__ import annotations

import torch
from torch import nn

from lmforge.models.bert import Bert
from lmforge.models.gpt import GPT
from lmforge.models.heads import _linear, backbone_hidden


def _grown(weight: torch.Tensor, n: int, token_ids: list[int]) -> nn.Parameter:
    rows = torch.cat([weight, weight.new_zeros(n - len(weight), *weight.shape[1:])])
    rows[token_ids] = weight.mean(0)
    return nn.Parameter(rows)


@torch.no_grad()
def add_token_rows(backbone: GPT | Bert, token_ids: list[int]) -> None:
    """Grows the vocabulary to hold token_ids (and config.vocab_size with it); their rows start at the mean of the
    existing ones, an average word rather than noise (Hewitt, 2021), and their MLM bias at 0, as transformers does."""
    table = backbone.embeddings.word if isinstance(backbone, Bert) else backbone.tok_emb
    n = max(table.num_embeddings, max(token_ids) + 1)
    table.weight, table.num_embeddings = _grown(table.weight, n, token_ids), n
    if isinstance(backbone, Bert) and backbone.mlm_head is not None:
        bias = backbone.mlm_head.bias
        backbone.mlm_head.bias = nn.Parameter(torch.cat([bias, bias.new_zeros(n - len(bias))]))
    if isinstance(backbone, GPT):
        head = backbone.lm_head
        head.weight = table.weight if backbone.cfg.tie_embeddings else _grown(head.weight, n, token_ids)
        head.out_features = n
    backbone.cfg.vocab_size = n


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
        hidden, _ = backbone_hidden(self.backbone, input_ids, attention_mask, token_type_ids)
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
        hidden, _ = backbone_hidden(self.backbone, input_ids, attention_mask, token_type_ids)
        logits = self.qa_outputs(hidden).transpose(1, 2)
        return logits.masked_fill(~attention_mask.bool()[:, None], torch.finfo(logits.dtype).min)
