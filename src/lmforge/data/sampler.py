"""Training batches: random blocks of one packed token array for pretraining, consecutive blocks for its evaluation,
padded batches of encoded examples for fine-tuning (FeatureSampler) and sentence pairs batched by length for
sequence-to-sequence training (PairBatchSampler), each with the state an exact resume needs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmforge.data.labelled import IGNORE, collate
from lmforge.data.parallel import TokenPairs
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


def class_weights(features: list[dict], n_labels: int) -> torch.Tensor:
    """n / (n_labels * count): each class weighs as much in the loss as a balanced data set would give it."""
    labels = torch.tensor([x for f in features for x in (f["label"] if isinstance(f["label"], list) else [f["label"]])])
    counts = torch.bincount(labels[labels != IGNORE], minlength=n_labels).float()
    return counts.sum() / (n_labels * counts.clamp(min=1))


class FeatureSampler:
    """Padded batches of encoded examples, epoch after epoch (a new order each epoch from the seed, or file order),
    this rank's share of each global batch. Each batch carries the weight of the whole global batch's labelled
    targets (`norm`), so that summed losses over the ranks give the one-process mean exactly."""

    def __init__(
        self,
        features: list[dict],
        batch_size: int,
        pad_id: int,
        shuffle: bool,
        seed: int,
        weight: torch.Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        collate_fn=collate,
    ):
        self.features, self.batch_size, self.pad_id, self.collate = features, batch_size, pad_id, collate_fn
        self.shuffle, self.seed = shuffle, seed
        self.weight, self.rank, self.world_size = weight, rank, world_size
        self.epoch, self.position, self.rows = 0, 0, 0
        self._generator, self._epoch_made = torch.Generator().manual_seed(seed), -1
        self.order = self._order()

    def _order(self) -> list[int]:
        """This epoch's order: the generator draws one permutation per epoch, in turn."""
        n = len(self.features)
        if not self.shuffle:
            return list(range(n))
        while self._epoch_made < self.epoch:
            order = torch.randperm(n, generator=self._generator).tolist()
            self._epoch_made += 1
        return order

    def next(self) -> dict[str, torch.Tensor]:
        if self.position >= len(self.order):
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self._order()
        rows = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        self.rows += len(rows)
        labels = [x for i in rows for x in _targets(self.features[i])]
        labels = torch.tensor([x for x in labels if x != IGNORE], dtype=torch.long)
        norm = float(len(labels)) if self.weight is None else float(self.weight[labels].sum())
        mine = rows[self.rank :: self.world_size]
        scale = float(self.world_size) if mine else 0.0  # a rank with no row this time adds nothing
        batch = self.collate([self.features[i] for i in mine or rows[:1]], self.pad_id)
        return batch | {"norm": torch.tensor(max(norm, 1e-12)), "scale": torch.tensor(scale)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self._generator, self._epoch_made = torch.Generator().manual_seed(self.seed), -1
        self.epoch, self.position, self.rows = state["epoch"], state["position"], state["rows"]
        self.order = self._order()


def _targets(feature: dict) -> list[int]:
    """A feature's label indices: one, one per token, or a span's (start, end)."""
    label = feature["label"]
    return label if isinstance(label, list) else list(label) if isinstance(label, tuple) else [label]


def length_batches(pairs: TokenPairs, order: np.ndarray, batch_tokens: int, batch_size: int) -> list[np.ndarray]:
    """The pairs of `order` sorted by length (ties keep their order) and cut into batches of similar lengths, so
    padding is small: each batch as many pairs as keep rows x (longest source + longest target) within batch_tokens,
    or batch_size pairs when batch_tokens is 0. A pair alone over the budget is a batch of its own."""
    source, target = pairs.lengths()
    order = order[np.argsort((source + target)[order], kind="stable")]
    if not batch_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start, longest_s, longest_t = [], 0, 0, 0
    for i, pair in enumerate(order):
        s, t = max(longest_s, source[pair]), max(longest_t, target[pair])
        if i > start and (i - start + 1) * (s + t) > batch_tokens:
            batches.append(order[start:i])
            start, s, t = i, source[pair], target[pair]
        longest_s, longest_t = s, t
    batches.append(order[start:])
    return batches


def pad_pairs(sides: list[tuple], pad_id: int, start_id: int) -> dict[str, torch.Tensor]:
    """A batch of (source ids, target ids) sequences: input_ids and attention_mask (B, S); labels (B, T), IGNORE
    where padded; decoder_input_ids, the labels shifted right after start_id (teacher forcing)."""
    s, t = max(len(x) for x, _ in sides), max(len(y) for _, y in sides)
    input_ids = torch.full((len(sides), s), pad_id, dtype=torch.long)
    labels = torch.full((len(sides), t), IGNORE, dtype=torch.long)
    decoder_input_ids = torch.full((len(sides), t), pad_id, dtype=torch.long)
    decoder_input_ids[:, 0] = start_id
    for row, (x, y) in enumerate(sides):
        input_ids[row, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        labels[row, : len(y)] = torch.as_tensor(y, dtype=torch.long)
        decoder_input_ids[row, 1 : len(y)] = labels[row, : len(y) - 1]
    return {
        "input_ids": input_ids,
        "attention_mask": input_ids != pad_id,
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }


def collate_pairs(pairs: TokenPairs, rows: np.ndarray, pad_id: int, start_id: int) -> dict[str, torch.Tensor]:
    """pad_pairs of the pairs at rows."""
    return pad_pairs([pairs.pair(int(i)) for i in rows], pad_id, start_id)


class PairBatchSampler:
    """Batches of sentence pairs by length (length_batches), epoch after epoch: each epoch the generator draws a
    permutation (the order among pairs of equal length) and the order of the batches. Its state is the epoch and
    the position in it; a resume draws the epochs again from the seed, so it continues exactly."""

    def __init__(self, pairs: TokenPairs, batch_tokens: int, batch_size: int, pad_id: int, start_id: int, seed: int):
        if len(pairs) == 0:
            raise LmforgeError("the parallel data has no sentence pairs to train on")
        self.pairs, self.batch_tokens, self.batch_size = pairs, batch_tokens, batch_size
        self.pad_id, self.start_id, self.seed = pad_id, start_id, seed
        self.epoch, self.position, self.batches = 0, 0, 0
        self._replay()

    def _replay(self) -> None:
        """Draws epochs 0..self.epoch from a fresh generator; the last one's batches are this epoch's."""
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):
            self.order = self._draw(generator)
        self._generator = generator

    def _draw(self, generator: torch.Generator) -> list[np.ndarray]:
        order = torch.randperm(len(self.pairs), generator=generator).numpy()
        batches = length_batches(self.pairs, order, self.batch_tokens, self.batch_size)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    @property
    def tokens_per_batch(self) -> float:
        """Real (not padding) source + target tokens per batch, on average over an epoch."""
        source, target = self.pairs.lengths()
        return float(source.sum() + target.sum()) / len(self.order)

    def next(self) -> dict[str, torch.Tensor]:
        if self.position >= len(self.order):
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self._draw(self._generator)
        rows = self.order[self.position]
        self.position += 1
        self.batches += 1
        return collate_pairs(self.pairs, rows, self.pad_id, self.start_id)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self.batches = state["epoch"], state["position"], state["batches"]
        self._replay()


def pair_batches(pairs: TokenPairs, batch_tokens: int, batch_size: int, pad_id: int, start_id: int):
    """Every pair once, in batches by length in a fixed order (evaluation)."""
    for rows in length_batches(pairs, np.arange(len(pairs)), batch_tokens, batch_size):
        yield collate_pairs(pairs, rows, pad_id, start_id)
