"""Growing a vocabulary: new tokens (e.g. relation extraction's entity markers) get rows that start as an average
word rather than noise (Hewitt, 2021)."""

from __future__ import annotations

import torch
from torch import nn


def grown(weight: torch.Tensor, n: int, token_ids: list[int]) -> nn.Parameter:
    """weight with rows up to n; the rows of token_ids (new or not) set to the mean of the existing rows."""
    rows = torch.cat([weight, weight.new_zeros(n - len(weight), *weight.shape[1:])])
    rows[token_ids] = weight.mean(0)
    return nn.Parameter(rows)


@torch.no_grad()
def grow_table(table: nn.Embedding, token_ids: list[int]) -> int:
    """Grows an embedding table to hold token_ids; returns the new vocabulary size."""
    n = max(table.num_embeddings, max(token_ids) + 1)
    table.weight, table.num_embeddings = grown(table.weight, n, token_ids), n
    return n
