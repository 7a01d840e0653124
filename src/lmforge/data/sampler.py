"""Pretraining batches from one packed token array: random blocks for training, consecutive blocks for evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmforge.errors import LmforgeError


def _blocks(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (B, seq_len) int64 for blocks starting at `starts`."""
    block = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))  # (B, seq_len + 1)
    return block[:, :-1].contiguous(), block[:, 1:].contiguous()


class BatchSampler:
    """Blocks at uniformly random offsets, as in nanoGPT, from a private generator so a resume is exact.

    Data parallel: every rank draws the same global batch of batch_size offsets and keeps its own slice of rows, so
    the ranks together see what one process would, and the state resumes under any number of ranks."""

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if len(tokens) < seq_len + 1:
            raise LmforgeError(
                f"the data split has {len(tokens)} tokens, fewer than seq_len+1 = {seq_len + 1}; "
                "use more text or a smaller train.seq_len"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        rows = batch_size // world_size
        self.rows = slice(rank * rows, (rank + 1) * rows)
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0  # drawn so far

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.seq_len, (self.batch_size,), generator=self.generator)
        self.batches += 1
        return _blocks(self.tokens, starts[self.rows].numpy(), self.seq_len)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = state["batches"]


def iter_eval_blocks(tokens: np.ndarray, batch_size: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every full block of the split once, in order, so the loss covers the whole split (a last partial block is
    dropped, and the last batch may be smaller)."""
    n_blocks = (len(tokens) - 1) // seq_len
    if n_blocks < 1:
        raise LmforgeError(
            f"the validation split has {len(tokens)} tokens, fewer than seq_len+1 = {seq_len + 1}; "
            "use more text, a larger data.val_fraction or a smaller train.seq_len"
        )
    starts = np.arange(n_blocks) * seq_len
    return (_blocks(tokens, starts[i : i + batch_size], seq_len) for i in range(0, n_blocks, batch_size))
