"""Fine-tuning configs: what a fine-tuned model predicts (its task) and the recipe that trains it."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from lmforge.config.fields import Checked, _positive


@dataclass
class TaskConfig(Checked):
    """What a fine-tuned checkpoint predicts and how it reads its inputs; saved with it, so evaluate and predict
    read files the way fine-tuning did."""

    section = "task"
    task: typing.Literal["classification", "ner", "relation", "qa"] = "classification"
    labels: list = field(default_factory=list)
    pooling: typing.Literal["cls", "mean", "last"] = "cls"
    max_seq_len: int = 128
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    head_column: str | None = None  # relation: the entity spans' keys
    tail_column: str | None = None
    markers: list = field(default_factory=list)  # relation: the token ids of [E1] [/E1] [E2] [/E2]
    doc_stride: int = 128  # qa: tokens shared by consecutive windows of a long context
    max_answer_len: int = 30  # qa: the longest answer predicted, in tokens

    _ranges = {
        "labels": (lambda v: len(v) >= 1 and all(isinstance(x, str) for x in v), "a list of label names"),
        "max_seq_len": (_positive, "must be positive"),
        "doc_stride": (lambda v: v >= 0, "must be >= 0"),
        "max_answer_len": (_positive, "must be positive"),
    }


@dataclass
class FinetuneConfig(Checked):
    """The fine-tuning recipe: AdamW with warmup + linear decay, optional layer-wise lr decay, clipping, evaluation
    every N steps with early stopping on the eval metric, optional class weights."""

    section = "finetune"
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.06  # a fraction of the steps when < 1, else a number of steps
    weight_decay: float = 0.01
    layer_lr_decay: float = 1.0  # lr x decay**(layers above); 1 = the same lr everywhere
    grad_clip: float = 1.0
    eval_every: int = 0  # 0 = at the end of each epoch
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    class_weights: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    shuffle: bool = True  # a new order each epoch; off, the data is read in file order
    seed: int = 0
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True

    _ranges = {
        "epochs": (_positive, "must be positive"),
        "max_steps": (lambda v: v is None or v > 0, "must be at least 1"),
        "batch_size": (_positive, "must be at least 1"),
        "lr": (_positive, "must be positive"),
        "warmup": (lambda v: v >= 0, "must be >= 0"),
        "weight_decay": (lambda v: v >= 0, "must be >= 0"),
        "layer_lr_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
        "grad_clip": (lambda v: v >= 0, "must be >= 0 (0 turns clipping off)"),
        "eval_every": (lambda v: v >= 0, "must be >= 0 (0 = each epoch)"),
        "patience": (lambda v: v >= 0, "must be >= 0 (0 = never stop early)"),
        "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    }
