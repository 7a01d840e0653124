"""Sequence classification: one label per text or text pair (sentiment, NLI), from a pooled representation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, Example, read_labelled
from lmforge.errors import LmforgeError
from lmforge.models.heads import SequenceClassifier
from lmforge.tasks.base import Task, label_record
from lmforge.tasks.metrics import classification_metrics
from lmforge.tokenizer import Tokenizer


def _truncate(a: list[int], b: list[int], budget: int) -> None:
    """Longest first: drops tokens from the end of the longer text until both fit."""
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()


def encode_classification(
    examples: list[Example], tokenizer: Tokenizer, family: str, max_seq_len: int, labels: list[str] | None
) -> list[dict]:
    """Token ids per example: [CLS] A [SEP] (B [SEP]) with segment ids for an encoder, A <sep> (B <sep>) <cls> with
    segments 0, 1 and 2 for an XLNet (its <cls> last, where the pooling reads it), A (<eos> B) for a GPT."""
    firsts = tokenizer.encode_batch([ex.text for ex in examples])
    pairs = tokenizer.encode_batch([ex.pair or "" for ex in examples])
    index = {label: i for i, label in enumerate(labels or [])}
    features = []
    for ex, a, b in zip(examples, firsts, pairs, strict=True):
        if family == "bert":
            _truncate(a, b, max_seq_len - (3 if b else 2))
            ids = [tokenizer.cls_id, *a, tokenizer.sep_id] + ([*b, tokenizer.sep_id] if b else [])
            types = [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2)
        elif family == "xlnet":
            _truncate(a, b, max_seq_len - (3 if b else 2))
            ids = [*a, tokenizer.sep_id] + ([*b, tokenizer.sep_id] if b else []) + [tokenizer.cls_id]
            types = [0] * (len(a) + 1) + [1] * (len(b) + 1 if b else 0) + [2]
        else:
            sep = [tokenizer.eos_id] if b and tokenizer.eos_id is not None else []
            _truncate(a, b, max_seq_len - len(sep))
            ids, types = a + sep + b, None
        features.append({"input_ids": ids, "token_type_ids": types, "label": index.get(ex.label, IGNORE)})
    return features


def sorted_labels(labels: set[str], path: str | Path, task: str) -> list[str]:
    """Class labels in a fixed order (numbers numerically); one class alone is a user mistake."""
    if len(labels) < 2:
        raise LmforgeError(f"{path}: every example has label {labels.pop()!r}; {task} needs two or more")
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    return sorted(labels, key=int if numeric else None)


class Classification(Task):
    name, metric = "classification", "accuracy"

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list[Example]:
        return read_labelled(path, columns, labelled, task=self.name)

    def labels(self, examples: list[Example], path: str | Path) -> list[str]:
        return sorted_labels({ex.label for ex in examples}, path, self.name)

    def encode(
        self, examples: list[Example], tokenizer: Tokenizer, family: str, task: TaskConfig, labelled: bool
    ) -> list[dict]:
        return encode_classification(examples, tokenizer, family, task.max_seq_len, task.labels if labelled else None)

    def build_head(self, backbone: nn.Module, task: TaskConfig) -> nn.Module:
        return SequenceClassifier(backbone, len(task.labels), task.pooling)

    def score(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> dict:
        return classification_metrics([f["label"] for f in features], [int(p.argmax()) for p in probs], task.labels)

    def records(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> list[dict]:
        return [
            {"text": ex.text} | ({"text_pair": ex.pair} if ex.pair is not None else {}) | label_record(task, p)
            for ex, p in zip(examples, probs, strict=True)
        ]

    def example(self, text: str, pair: str | None, n: int) -> Example:
        return Example(0, text, pair)
