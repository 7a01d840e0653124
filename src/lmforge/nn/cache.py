"""Key/value cache for incremental decoding: preallocated, so each new token is written in place."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values of the tokens seen so far, plus cross-attention keys/values computed once."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, d_head: int, dtype, device):
        shape = (batch, n_head, max_len, d_head)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.max_len = max_len
        self.length = 0  # tokens already cached; the model advances it after every layer has written

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes (B, n_head, T, d_head) keys/values after the cached ones and returns all of them."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
