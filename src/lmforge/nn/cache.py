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

    def positions(self, t: int, device: torch.device) -> torch.Tensor:
        """The positions of the next t tokens: (t,), the same for every row."""
        return torch.arange(self.length, self.length + t, device=device)

    def key_padding(self, t: int) -> torch.Tensor | None:
        """Which cached keys each row may see, beyond causality: all of them here."""
        return None

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


class SlotCache:
    """The KV cache of continuous batching: `slots` rows of max_len positions, each row with a length of its own, so
    sequences of different lengths decode in one forward pass and a finished one frees its row at once.

    A forward pass extends rows 0..n-1 (rows(n)) or one row (rows(n, first=i)); the server keeps its live sequences
    in the first rows (move() fills a freed row with the last one), so the keys are read as views, never gathered."""

    def __init__(self, n_layer: int, slots: int, n_head: int, max_len: int, d_head: int, dtype, device):
        shape = (slots, n_head, max_len, d_head)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.lengths = [0] * slots
        self.max_len = max_len

    def rows(self, n: int, first: int = 0) -> SlotRows:
        return SlotRows(self, first, n)

    def move(self, source: int, target: int) -> None:
        """Row target takes over what row source holds (its cached positions only); source becomes free."""
        length = self.lengths[source]
        for kv in (self.k, self.v):
            for layer in kv:
                layer[target, :, :length] = layer[source, :, :length]
        self.lengths[target], self.lengths[source] = length, 0


class SlotRows:
    """Rows first..first+n-1 of a SlotCache as one forward pass sees them: the KVCache interface (length, positions,
    key_padding, update, advance), with a start position per row."""

    def __init__(self, cache: SlotCache, first: int, n: int):
        self.cache, self.first, self.n = cache, first, n
        self.starts = cache.lengths[first : first + n]
        self.length = max(self.starts)  # keys 0..length-1 hold something for some row
        self.max_len = cache.max_len
        self.cross: dict = {}
        self._positions: dict[int, torch.Tensor] = {}  # by t: every layer of the pass asks for the same ones

    def positions(self, t: int, device: torch.device) -> torch.Tensor:
        """(n, t): each row's next t positions."""
        if t not in self._positions:
            self._positions[t] = torch.tensor(self.starts, device=device)[:, None] + torch.arange(t, device=device)
        return self._positions[t]

    def key_padding(self, t: int) -> torch.Tensor:
        """(n, length + t): a row sees its own cached keys and its t new ones, not the other rows' longer past."""
        device = self.cache.k[0].device
        return torch.arange(self.length + t, device=device)[None] < self.positions(t, device)[:, -1:] + 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes (n, n_head, t, d_head) keys/values at each row's own next positions; returns the rows' keys and
        values up to the longest row's end (n, n_head, length + t, d_head), as views."""
        t = k.size(2)
        if self.length + t > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.length + t} were asked for")
        positions = self.positions(t, k.device)
        rows = torch.arange(self.first, self.first + self.n, device=k.device)[:, None].expand_as(positions)
        keys, values = self.cache.k[layer], self.cache.v[layer]
        keys[rows, :, positions] = k.transpose(1, 2)
        values[rows, :, positions] = v.transpose(1, 2)
        end = self.length + t
        span = slice(self.first, self.first + self.n)
        return keys[span, :, :end], values[span, :, :end]

    def advance(self, t: int) -> None:
        for i in range(self.first, self.first + self.n):
            self.cache.lengths[i] += t
