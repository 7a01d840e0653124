"""Builders shared by several test modules (importable because pyproject puts tests/ on pytest's pythonpath)."""

import torch

from lmforge.config import GPTConfig
from lmforge.models import GPT


def tiny_gpt(seed=0, gpt2_init=False, **overrides):
    """A small GPT; unless gpt2_init, its weights are redrawn large, so attention is peaked and positions matter."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, n_layer=2, n_head=2, d_model=16, max_seq_len=16)
    model = GPT(GPTConfig(**{**cfg, **overrides})).eval()
    if not gpt2_init:
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return model
