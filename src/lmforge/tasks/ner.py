"""Token classification (NER): an IOB2 tag per word, learned on each word's first subword and mapped back to words."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, Example, read_labelled
from lmforge.errors import LmforgeError
from lmforge.models.heads import TokenClassifier
from lmforge.tasks.base import Task
from lmforge.tasks.metrics import entity_metrics
from lmforge.tokenizer import Tokenizer


def encode_tokens(
    examples: list[Example], tokenizer: Tokenizer, family: str, max_seq_len: int, labels: list[str] | None
) -> list[dict]:
    """Token ids per sentence with each word's tag on its first subword (IGNORE on the rest), and `words`: the
    position of each word's first subword (-1 for a word cut off by max_seq_len, or that has no subword)."""
    lead = 1 if family == "bert" else 0  # [CLS]; an XLNet's <sep> <cls> come after the words
    space = tokenizer.kind == "bpe"  # byte-level BPE marks a word start by its leading space
    batch = [[w if i == 0 or not space else " " + w for i, w in enumerate(ex.text)] for ex in examples]
    encodings = tokenizer.backend.encode_batch(batch, is_pretokenized=True, add_special_tokens=False)
    index = {label: i for i, label in enumerate(labels or [])}
    features = []
    for ex, enc in zip(examples, encodings, strict=True):
        budget = max_seq_len - (2 if family in ("bert", "xlnet") else 0)
        ids, word_ids = enc.ids[:budget], enc.word_ids[:budget]
        targets, words = [IGNORE] * len(ids), [-1] * len(ex.text)
        for pos, w in enumerate(word_ids):
            if w is not None and words[w] == -1:
                words[w] = pos + lead
                targets[pos] = index.get(ex.label[w], IGNORE) if ex.label else IGNORE
        if lead:
            ids, targets = [tokenizer.cls_id, *ids, tokenizer.sep_id], [IGNORE, *targets, IGNORE]
        elif family == "xlnet":
            ids, targets = [*ids, tokenizer.sep_id, tokenizer.cls_id], [*targets, IGNORE, IGNORE]
        features.append({"input_ids": ids, "token_type_ids": None, "label": targets, "words": words})
    return features


def _tag_key(tag: str) -> tuple:
    return (tag != "O", tag[2:], tag[:1])  # O first, then by entity type, B- before I-


class TokenTagging(Task):
    name, metric = "ner", "f1"

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list[Example]:
        return read_labelled(path, columns, labelled, words=True, task=self.name)

    def labels(self, examples: list[Example], path: str | Path) -> list[str]:
        """O first, then each entity type's B- and I-; a tag that is not IOB2 is an error at its line."""
        for ex in examples:
            for i, tag in enumerate(ex.label):
                if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
                    raise LmforgeError(f"{path}, line {ex.line_of(i)}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        return sorted({t for ex in examples for t in ex.label}, key=_tag_key)

    def encode(
        self, examples: list[Example], tokenizer: Tokenizer, family: str, task: TaskConfig, labelled: bool
    ) -> list[dict]:
        return encode_tokens(examples, tokenizer, family, task.max_seq_len, task.labels if labelled else None)

    def build_head(self, backbone: nn.Module, task: TaskConfig) -> nn.Module:
        return TokenClassifier(backbone, len(task.labels))

    def gather(self, probs: torch.Tensor, feature: dict) -> torch.Tensor:
        """(T, n_labels) per token -> (n_words, n_labels) at each word's first subword; a word cut off by max_seq_len
        gets all its mass on label 0, which is O in a tag set."""
        words = torch.tensor(feature["words"], dtype=torch.long)
        word_probs = probs[words.clamp(min=0)]
        word_probs[words < 0] = torch.nn.functional.one_hot(torch.tensor(0), probs.size(-1)).to(probs.dtype)
        return word_probs

    def score(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> dict:
        pred = [[task.labels[i] for i in p.argmax(-1).tolist()] for p in probs]
        return entity_metrics([ex.label for ex in examples], pred)

    def records(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> list[dict]:
        out = []
        for ex, p in zip(examples, probs, strict=True):
            best = p.argmax(-1).tolist()
            out.append({
                "words": ex.text,
                "tags": [task.labels[i] for i in best],
                "probabilities": [round(float(row[i]), 6) for row, i in zip(p, best, strict=True)],
            })  # fmt: skip
        return out

    def example(self, text: str, pair: str | None, n: int) -> Example:
        return Example(0, text.split(), pair)
