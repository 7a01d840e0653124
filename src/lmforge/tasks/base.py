"""What a fine-tuning task is: how it reads and encodes examples, the head it puts on a backbone, how it scores
predictions and turns one into an output record. Each task is one module of lmforge.tasks with a subclass of Task."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, check_labels, collate
from lmforge.tokenizer import Tokenizer


class Task:
    """The interface every task implements; the defaults suit a task with one label per example."""

    name = ""  # the --task name, saved in a fine-tuned checkpoint's task section
    metric = "accuracy"  # the eval metric that picks the best checkpoint (higher is better)
    max_seq_len = 128  # tokens per example unless --max-seq-len says otherwise
    class_labels = True  # whether --class-weights has classes to weigh
    generates = False  # whether predictions are generated text (generate) rather than probabilities
    language_model = False  # whether the fine-tuned model is a language model still (chat): generate and serve it

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list:
        """The examples of a file; every mistake in it is one error naming the file and the line."""
        raise NotImplementedError

    def labels(self, examples: list, path: str | Path) -> list[str]:
        """The label set, discovered from the training examples in a fixed order."""
        raise NotImplementedError

    def check(self, examples: list, labels: list[str], path: str | Path) -> None:
        """Every label of an evaluation file must be one the model was trained on."""
        check_labels(examples, labels, path)

    def setup(self, backbone: nn.Module, tokenizer: Tokenizer, task: TaskConfig) -> None:
        """Changes a task needs in the tokenizer or the backbone before encoding (relation: entity markers)."""

    def files(self) -> dict[str, str]:
        """Text files the fine-tuned checkpoint holds beside its weights (chat: its chat_template.jinja)."""
        return {}

    def encode(self, examples: list, tokenizer: Tokenizer, family: str, task: TaskConfig, labelled: bool) -> list[dict]:
        """Features: input_ids, token_type_ids (or None), label (an index, a list per token, or IGNORE) and any keys
        the task needs to map predictions back."""
        raise NotImplementedError

    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        """A padded batch of features: input_ids, attention_mask, token_type_ids, labels."""
        return collate(features, pad_id)

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The task model's logits for a batch of collate."""
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def loss(self, weight: torch.Tensor | None):
        """The loss every task trains with: cross-entropy over its logits' last axis (classes, tags, a span's
        positions, target tokens), IGNORE skipped, summed over this rank's rows and divided by the global batch's
        weight (so data-parallel ranks add up to the one-process mean)."""

        def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict]:
            logits = self.logits(model, batch)
            w = None if weight is None else weight.to(logits.device)
            loss = F.cross_entropy(
                logits.flatten(0, -2).float(), batch["labels"].flatten(), w, ignore_index=IGNORE, reduction="sum"
            )
            return loss * batch["scale"] / batch["norm"], {}

        return loss_fn

    def generate(self, model: nn.Module, tokenizer: Tokenizer, features: list[dict], batch_size: int, device) -> list:
        """A generating task's output per feature (generates = True)."""
        raise NotImplementedError

    def build_head(self, backbone: nn.Module, task: TaskConfig) -> nn.Module:
        """The task's model around the backbone: forward(input_ids, attention_mask, token_type_ids) -> logits."""
        raise NotImplementedError

    def gather(self, probs: torch.Tensor, feature: dict) -> torch.Tensor:
        """One feature's probabilities as the task scores them (NER: per word instead of per token)."""
        return probs

    def score(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> dict:
        """The task's metrics of predicted probabilities against the examples' labels."""
        raise NotImplementedError

    def records(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> list[dict]:
        """One JSON-ready prediction per example."""
        raise NotImplementedError

    def example(self, text: str, pair: str | None, n: int):
        """The example a user typed as `lmforge predict --text` (the n-th), with `--text-pair` / `--context`."""
        raise NotImplementedError


def label_record(task: TaskConfig, probs: torch.Tensor) -> dict:
    """The label and each label's probability, for a task with one label per example."""
    return {
        "label": task.labels[int(probs.argmax())],
        "probabilities": {label: round(float(p), 6) for label, p in zip(task.labels, probs, strict=True)},
    }
