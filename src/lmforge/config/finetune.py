"""Fine-tuning configs: what a fine-tuned model predicts (its task) and the recipe that trains it."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config.fields import Checked, _positive, merge_precision
from lmforge.config.overrides import apply_override, build_section, missing, read_yaml
from lmforge.errors import LmforgeError


@dataclass
class TaskConfig(Checked):
    """What a fine-tuned checkpoint predicts and how it reads its inputs; saved with it, so evaluate and predict
    read files the way fine-tuning did."""

    section = "task"
    task: str = "classification"  # a name in lmforge.tasks.TASKS
    labels: list = field(default_factory=list)
    pooling: typing.Literal["cls", "mean", "last"] | None = None  # None: cls for an encoder, last for a GPT
    max_seq_len: int | None = None  # None: the task's default (128; qa 384), at most the model's context
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    head_column: str | None = None  # relation: the entity spans' keys
    tail_column: str | None = None
    markers: list = field(default_factory=list)  # relation: the token ids of [E1] [/E1] [E2] [/E2]
    doc_stride: int = 128  # qa: tokens shared by consecutive windows of a long context
    max_answer_len: int = 30  # qa: the longest answer predicted, in tokens

    _ranges = {
        "labels": (lambda v: all(isinstance(x, str) for x in v), "a list of label names (found in the data if empty)"),
        "max_seq_len": (lambda v: v is None or v > 0, "must be positive"),
        "doc_stride": (lambda v: v >= 0, "must be >= 0"),
        "max_answer_len": (_positive, "must be positive"),
    }


@dataclass
class FinetuneConfig(Checked):
    """The fine-tuning recipe: AdamW with warmup + linear decay, optional layer-wise lr decay, clipping, evaluation
    every N steps with early stopping on the eval metric, optional class weights."""

    section = "finetune"
    model: str | None = None  # a pretrained or fine-tuned lmforge checkpoint, a Hugging Face directory, a package name
    train: str | None = None  # labelled training data
    eval: str | None = None  # labelled data to evaluate on and keep the best checkpoint by
    out: str | None = None  # the run directory
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
    grad_accum_steps: int = 1  # batches whose gradients add up to one step
    save_every: int = 0  # a resumable checkpoint (OUT/resume) every N steps; 0 = at evaluations only
    log_every: int = 10
    max_nonfinite: int = 5  # steps in a row with a non-finite loss or gradient (each skipped) before the run stops
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"
    dtype: typing.Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    precision: typing.Literal["auto", "fp32", "bf16"] | None = None  # another name for dtype; given, it sets dtype
    progress: bool = True
    grid_intensity: float = 0.4  # kg CO2 per kWh of the electricity, for the energy figures in metrics.jsonl

    _ranges = {
        "grid_intensity": (lambda v: v >= 0, "kg CO2 per kWh, >= 0 (about 0.4 on average; 0.02-0.05 for hydro)"),
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
        "grad_accum_steps": (_positive, "must be at least 1"),
        "save_every": (lambda v: v >= 0, "must be >= 0 (0 = at evaluations only)"),
        "log_every": (_positive, "must be at least 1"),
        "max_nonfinite": (_positive, "must be at least 1"),
    }

    def check(self) -> None:
        merge_precision(self)


@dataclass
class FinetuneRun:
    """lmforge finetune's whole config: a YAML file with the sections task and finetune."""

    task: TaskConfig = field(default_factory=TaskConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FINETUNE_SECTIONS = {"task": TaskConfig, "finetune": FinetuneConfig}


def load_finetune_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), values: dict | None = None
) -> FinetuneRun:
    """A fine-tuning config from a YAML file (or the defaults), with `section.key=value` overrides on top, then
    `values` ({"section.key": value}, e.g. from command-line flags) taken as they are."""
    raw = {}
    if path is not None:
        if not Path(path).is_file():
            raise missing(Path(path), "a YAML file with the sections task and finetune")
        raw = read_yaml(Path(path), "task, finetune")
    for assignment in overrides:
        apply_override(raw, assignment, FINETUNE_SECTIONS)
    for key, value in (values or {}).items():
        section, name = key.split(".", 1)
        if not isinstance(raw.setdefault(section, {}), dict):
            raise LmforgeError(f"{path}: section {section!r} must be a mapping of field: value")
        raw[section][name] = value
    where = str(path) if path is not None else "--set"
    unknown = set(raw) - set(FINETUNE_SECTIONS)
    if unknown:
        raise LmforgeError(f"{where}: unknown section {min(map(str, unknown))!r}; the sections are task, finetune")
    built = {name: build_section(kind, raw.get(name) or {}, name, where) for name, kind in FINETUNE_SECTIONS.items()}
    return FinetuneRun(**built)
