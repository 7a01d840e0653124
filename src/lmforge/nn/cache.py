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
        start, t = self.length, k.size(2)
        if start + t > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {start + t} were asked for")
        keys, values = self.k[layer], self.v[layer]
        keys.narrow(2, start, t).copy_(k)
        values.narrow(2, start, t).copy_(v)
        return keys.narrow(2, 0, start + t), values.narrow(2, 0, start + t)

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, rows: torch.Tensor) -> None:
        """Rows follow their beams in beam search: row i now holds what row rows[i] held. Only the cached positions
        are copied, into fresh buffers with room for the rest."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty((rows.numel(), *t.shape[1:]))
            torch.index_select(t.narrow(2, 0, self.length), 0, rows, out=out.narrow(2, 0, self.length))
            return out

        self.k = [pick(k) for k in self.k]
        self.v = [pick(v) for v in self.v]
        self.cross = {layer: (k.index_select(0, rows), v.index_select(0, rows)) for layer, (k, v) in self.cross.items()}
