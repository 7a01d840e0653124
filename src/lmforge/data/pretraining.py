"""Encoder pretraining batches: [CLS] A [SEP] B [SEP] pairs from documents with NSP or SOP labels, masked for MLM
anew at every draw (dynamic masking, as RoBERTa), all from a private generator so a resume is exact."""

from __future__ import annotations

import numpy as np
import torch

from lmforge.data.documents import DocumentSplit
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

IGNORE = -100  # the label of a position the MLM loss skips


def mask_tokens(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    mask_id: int,
    replacements: torch.Tensor,
    generator: torch.Generator,
    probability: float = 0.15,
    word_starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of (B, T) ids: each candidate position is selected with `probability` (with word_starts, a
    word is selected or not as a whole); a selected token becomes mask_id 80% of the time, a random id from
    replacements 10%, and stays 10%, so the model cannot tell which inputs to trust. Returns the inputs and the
    labels: the original id where selected, IGNORE elsewhere."""
    draw = torch.rand(ids.shape, generator=generator)
    if word_starts is not None:  # every token takes the draw of the first token of its word
        positions = torch.arange(ids.size(1)).expand_as(ids)
        draw = draw.gather(1, torch.where(word_starts, positions, 0).cummax(dim=1).values)
    selected = (draw < probability) & candidates
    action = torch.rand(ids.shape, generator=generator)
    random_ids = replacements[torch.randint(len(replacements), ids.shape, generator=generator)]
    inputs = torch.where(selected & (action < 0.8), mask_id, ids)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(selected, ids, IGNORE)


class PretrainingSampler:
    """Random examples from a document split, with the BatchSampler interface (next, state_dict, load_state_dict).

    An example starts at a random sentence and takes whole sentences of its document up to the length budget (a
    first sentence longer than the budget is cut). With a sentence objective the span is split in two at a random
    sentence boundary (or token, for a single sentence): NSP replaces B, half the time, by text from a random other
    document (label 1); SOP swaps A and B half the time (label 1). Without one, the span is one segment (RoBERTa).
    """

    def __init__(
        self,
        split: DocumentSplit,
        tokenizer: Tokenizer,
        batch_size: int,
        seq_len: int,
        seed: int,
        sentence_objective: str = "nsp",
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
    ):
        roles = {role: tokenizer.special_id(role) for role in ("cls", "sep", "pad", "mask")}
        if None in roles.values():
            raise LmforgeError(
                f"the {tokenizer.kind} tokenizer has no {next(r for r, i in roles.items() if i is None)} token; "
                "an encoder needs [CLS], [SEP], [PAD] and [MASK]: use data.tokenizer wordpiece or bpe"
            )
        self.cls, self.sep, self.pad, self.mask = roles.values()
        self.objective, self.pairs = sentence_objective, sentence_objective != "none"
        shortest = 5 if self.pairs else 3  # [CLS] A [SEP] B [SEP], or [CLS] A [SEP]
        if seq_len < shortest:
            raise LmforgeError(f"train.seq_len = {seq_len} leaves no room for [CLS] A [SEP] B [SEP]: use {shortest}+")
        if sentence_objective == "nsp" and split.n_documents < 2:
            raise LmforgeError(
                f"next-sentence prediction draws its negatives from other documents, and this split has "
                f"{split.n_documents}: separate documents by blank lines (or give one JSONL record each)"
            )
        self.tokens, self.sentences, self.documents = split.tokens, np.asarray(split.sentences), split.documents
        self.batch_size, self.seq_len, self.mlm_probability = batch_size, seq_len, mlm_probability
        self.budget = seq_len - (3 if self.pairs else 2)  # room left by [CLS] and the [SEP]s
        self.doc_of = np.repeat(np.arange(split.n_documents), np.diff(split.documents))  # sentence -> document
        doc_end = self.sentences[np.asarray(split.documents)[1:]]  # where each document's tokens end
        self.starts = np.flatnonzero(doc_end[self.doc_of] - self.sentences[:-1] >= (2 if self.pairs else 1))
        if len(self.starts) == 0:
            raise LmforgeError("no document of the split has the 2 tokens a sentence pair needs: use more text")
        special = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        special[tokenizer.special_ids] = True
        self.special_ids = torch.tensor(tokenizer.special_ids)
        self.replacements = torch.arange(tokenizer.vocab_size)[~special]  # a random token is never a special one
        self.continues = torch.tensor(tokenizer.continues_word()) if whole_word_masking else None
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def _span(self, s: int) -> tuple[int, int, np.ndarray]:
        """Tokens [start, stop) of whole sentences from sentence s within the budget, and the sentence starts inside.

        When whole sentences give fewer tokens than an example needs, the span runs on to the budget mid-sentence.
        """
        last = self.documents[self.doc_of[s] + 1]  # the document's end, in sentences
        start, bounds = self.sentences[s], self.sentences[s + 1 : last + 1]
        fits = bounds[: np.searchsorted(bounds, start + self.budget, side="right")]
        if len(fits) and fits[-1] - start >= (2 if self.pairs else 1):
            return start, fits[-1], fits[:-1]
        stop = min(self.sentences[last], start + self.budget)
        return start, stop, fits[fits < stop]

    def _example(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Segments A and B and the sentence label from five uniform draws (B is empty without a sentence objective)."""
        s = self.starts[int(u[0] * len(self.starts))]
        start, stop, inner = self._span(s)
        if not self.pairs:
            return self.tokens[start:stop], self.tokens[stop:stop], IGNORE
        split = inner[int(u[1] * len(inner))] if len(inner) else start + 1 + int(u[1] * (stop - start - 1))
        a, b, label = self.tokens[start:split], self.tokens[split:stop], int(u[2] < 0.5)
        if label and self.objective == "sop":
            a, b = b, a
        elif label:  # a random start in a random other document fills the room A leaves
            doc = self.doc_of[s]
            other = int(u[3] * (len(self.documents) - 2))
            other += other >= doc
            first, last = self.documents[other], self.documents[other + 1]
            b_start = self.sentences[first + int(u[4] * (last - first))]
            b = self.tokens[b_start : min(self.sentences[last], b_start + self.budget - len(a))]
        return a, b, label

    def next(self) -> dict[str, torch.Tensor]:
        """input_ids, token_type_ids, attention_mask (True = real token) and MLM labels, all (B, T); with a sentence
        objective also sentence_label (B,)."""
        draws = torch.rand(self.batch_size, 5, generator=self.generator, dtype=torch.float64).numpy()
        ids = np.full((self.batch_size, self.seq_len), self.pad, dtype=np.int64)
        types = np.zeros_like(ids)
        lengths, labels = np.zeros(self.batch_size, dtype=np.int64), np.zeros(self.batch_size, dtype=np.int64)
        for i, u in enumerate(draws):
            a, b, labels[i] = self._example(u)
            row = [self.cls, *a.tolist(), self.sep, *([*b.tolist(), self.sep] if self.pairs else [])]
            ids[i, : len(row)], types[i, len(a) + 2 : len(row)], lengths[i] = row, 1, len(row)
        ids = torch.from_numpy(ids)
        special = torch.isin(ids, self.special_ids)
        word_starts = None
        if self.continues is not None:  # a token after a special one starts a word, whatever it looks like
            word_starts = ~self.continues[ids] | special | torch.nn.functional.pad(special[:, :-1], (1, 0), value=True)
        inputs, mlm_labels = mask_tokens(
            ids, ~special, self.mask, self.replacements, self.generator, self.mlm_probability, word_starts
        )
        batch = {
            "input_ids": inputs,
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.arange(self.seq_len) < torch.from_numpy(lengths)[:, None],
            "labels": mlm_labels,
        }
        if self.pairs:
            batch["sentence_label"] = torch.from_numpy(labels)
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = state["batches"]
