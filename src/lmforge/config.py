"""Configuration: one dataclass per model family plus training and data settings, loaded from YAML with overrides.

Every field is checked when a config is built, so a wrong type or value names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import LmforgeError


def _check_field(owner: str, name: str, kind: Any, value: Any) -> Any:
    """Returns value converted to the field's type (an int is a valid float), or raises naming the field."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Literal:
        if value not in args:
            raise LmforgeError(f"{owner}.{name} must be one of {', '.join(map(str, args))}, not {value!r}")
        return value
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LmforgeError(f"{owner}.{name} must be {kind.__name__}, not {type(value).__name__} ({value!r})")
    if kind is float and not math.isfinite(value):
        raise LmforgeError(f"{owner}.{name} must be a finite number, not {value!r}")
    return value


class Checked:
    """Mixin: types are checked after __init__, then each class's `_ranges` (name -> (test, hint)) are applied."""

    _ranges: dict[str, tuple[Any, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        owner = getattr(self, "section", type(self).__name__)
        for f in fields(self):
            if f.name in hints and not dataclasses.is_dataclass(hints[f.name]):
                setattr(self, f.name, _check_field(owner, f.name, hints[f.name], getattr(self, f.name)))
        for name, (test, hint) in self._ranges.items():
            if not test(getattr(self, name)):
                raise LmforgeError(f"{owner}.{name} = {getattr(self, name)!r} is out of range: {hint}")
        self.check()

    def check(self) -> None:
        """Cross-field rules of a family; the default has none."""


def _positive(x):
    return x > 0


def _fraction(x):
    return 0.0 <= x < 1.0


_STACK_RANGES = {
    "vocab_size": (_positive, "needs at least one token"),
    "n_layer": (_positive, "needs at least one layer"),
    "n_head": (_positive, "needs at least one head"),
    "d_model": (_positive, "must be positive"),
    "max_seq_len": (_positive, "must be positive"),
    "dropout": (_fraction, "a probability in [0, 1)"),
    "layer_norm_eps": (_positive, "must be positive"),
}


def _check_widths(cfg) -> None:
    """The rules every Transformer stack shares: d_ff defaults to 4 * d_model, heads divide d_model."""
    if cfg.d_ff is None:
        cfg.d_ff = 4 * cfg.d_model
    if cfg.d_ff <= 0:
        raise LmforgeError(f"model.d_ff = {cfg.d_ff} is out of range: must be positive")
    if cfg.d_model % cfg.n_head:
        raise LmforgeError(
            f"model.d_model ({cfg.d_model}) must be divisible by model.n_head ({cfg.n_head}); change one of them"
        )


@dataclass
class GPTConfig(Checked):
    """A decoder-only causal language model (GPT-2 shaped by default)."""

    section = "model"
    vocab_size: int = 50257
    n_layer: int = 6
    n_head: int = 6
    d_model: int = 384
    d_ff: int | None = None  # 4 * d_model when left out
    max_seq_len: int = 256
    dropout: float = 0.0
    position: typing.Literal["learned", "sinusoidal", "rotary"] = "learned"
    norm: typing.Literal["pre", "post"] = "pre"
    activation: typing.Literal["gelu", "gelu_exact", "relu"] = "gelu"
    tie_embeddings: bool = True
    bias: bool = True
    layer_norm_eps: float = 1e-5

    _ranges = _STACK_RANGES

    def check(self) -> None:
        _check_widths(self)
        if self.position == "rotary" and (self.d_model // self.n_head) % 2:
            raise LmforgeError("model.position = rotary needs an even head size (d_model / n_head)")


@dataclass
class BertConfig(Checked):
    """A bidirectional encoder pretrained by masked language modelling; BERT-base shaped by default.

    RoBERTa and ALBERT are settings of it: RoBERTa drops the sentence objective (sentence_objective none,
    type_vocab_size 1); ALBERT factorizes the embedding (embedding_size < d_model), shares one layer's weights across
    the stack (share_layers) and predicts sentence order (sentence_objective sop).
    """

    section = "model"
    vocab_size: int = 30522
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None  # 4 * d_model when left out
    embedding_size: int | None = None  # ALBERT's E; d_model when left out
    max_seq_len: int = 512
    type_vocab_size: int = 2  # segment ids: 0 for sentence A, 1 for sentence B
    dropout: float = 0.1
    norm: typing.Literal["pre", "post"] = "post"
    activation: typing.Literal["gelu", "gelu_exact", "relu"] = "gelu_exact"
    layer_norm_eps: float = 1e-12
    share_layers: bool = False
    sentence_objective: typing.Literal["nsp", "sop", "none"] = "nsp"
    mlm_head: bool = True  # False: a bare encoder (e.g. an imported sentence-embedding model), no MLM head
    position_offset: int = 0  # RoBERTa numbers positions from padding_idx + 1 = 2; the table has that many more rows

    _ranges = {**_STACK_RANGES, "type_vocab_size": (_positive, "needs at least one segment type")}

    def check(self) -> None:
        _check_widths(self)
        if self.embedding_size is None:
            self.embedding_size = self.d_model
        if self.embedding_size <= 0:
            raise LmforgeError(f"model.embedding_size = {self.embedding_size} is out of range: must be positive")
        if self.position_offset < 0:
            raise LmforgeError(f"model.position_offset = {self.position_offset} is out of range: must be >= 0")
        if self.sentence_objective != "none" and self.type_vocab_size < 2:
            raise LmforgeError(
                f"model.sentence_objective = {self.sentence_objective} needs two segment types: "
                "set model.type_vocab_size to 2 or the objective to none"
            )


@dataclass
class DataConfig(Checked):
    """Where the text comes from and how it becomes tokens."""

    section = "data"
    path: str | None = None  # a text, .jsonl or .csv file (prepared on the fly) or a prepared directory
    tokenizer: str = "char"  # char, bpe, wordpiece, or a path to a tokenizer.json
    vocab_size: int = 8192  # for a BPE or WordPiece tokenizer trained on the data
    val_fraction: float = 0.1
    on_bad_line: typing.Literal["error", "skip"] = "error"  # a malformed .jsonl/.csv record: stop, or skip and count
    lowercase: bool = True  # WordPiece: lower-case the text (an uncased model)
    strip_accents: bool = True  # WordPiece: drop accents (café -> cafe)
    mlm_probability: float = 0.15  # masked language modelling: the share of tokens to predict
    whole_word_masking: bool = False  # MLM: select whole words, never a piece of one

    _ranges = {
        "vocab_size": (
            lambda v: v >= 260,
            "a byte-level BPE needs at least 260 entries (256 bytes + specials)",
        ),
        "val_fraction": (_fraction, "a fraction in [0, 1)"),
        "mlm_probability": (lambda p: 0 < p < 1, "a probability in (0, 1), usually 0.15"),
    }


@dataclass
class TrainConfig(Checked):
    """The optimization: AdamW, linear warmup + cosine decay, clipping, accumulation, evaluation, checkpoints."""

    section = "train"
    out: str = "runs/gpt"
    batch_size: int = 8
    seq_len: int | None = None  # the model's max_seq_len when left out
    grad_accum_steps: int = 1
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_every: int = 250
    eval_steps: int = 20
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 3
    log_every: int = 10
    seed: int = 1337
    max_nonfinite: int = 5  # steps in a row with a non-finite loss or gradient (each skipped) before the run stops
    parallel: typing.Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate the model, or shard it (FSDP)
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"
    dtype: typing.Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    progress: bool = True

    _ranges = {
        "batch_size": (_positive, "must be at least 1"),
        "grad_accum_steps": (_positive, "must be at least 1"),
        "max_steps": (_positive, "must be at least 1"),
        "lr": (_positive, "must be positive"),
        "min_lr": (lambda v: v >= 0, "must be >= 0"),
        "warmup_steps": (lambda v: v >= 0, "must be >= 0"),
        "weight_decay": (lambda v: v >= 0, "must be >= 0"),
        "beta1": (_fraction, "in [0, 1)"),
        "beta2": (_fraction, "in [0, 1)"),
        "grad_clip": (lambda v: v >= 0, "must be >= 0 (0 turns clipping off)"),
        "eval_every": (lambda v: v >= 0, "must be >= 0 (0 = only at the end)"),
        "eval_steps": (_positive, "must be at least 1"),
        "save_every": (lambda v: v >= 0, "must be >= 0 (0 = only at the end)"),
        "keep_last": (_positive, "must keep at least 1 checkpoint"),
        "log_every": (_positive, "must be at least 1"),
        "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
        "max_nonfinite": (_positive, "must be at least 1"),
        "out": (bool, "must name a directory"),
    }

    def check(self) -> None:
        if self.seq_len is not None and self.seq_len <= 0:
            raise LmforgeError(f"train.seq_len = {self.seq_len} is out of range: must be positive")


@dataclass
class TaskConfig(Checked):
    """What a fine-tuned checkpoint predicts and how it reads its inputs; saved with it, so evaluate and predict
    read files the way fine-tuning did."""

    section = "task"
    task: typing.Literal["classification", "ner"] = "classification"
    labels: list = field(default_factory=list)
    pooling: typing.Literal["cls", "mean", "last"] = "cls"
    max_seq_len: int = 128
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None

    _ranges = {
        "labels": (lambda v: len(v) >= 1 and all(isinstance(x, str) for x in v), "a list of label names"),
        "max_seq_len": (_positive, "must be positive"),
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


FAMILIES = {"gpt": GPTConfig, "bert": BertConfig}


@dataclass
class RunConfig:
    """Everything a training run needs; a YAML file has the sections family, model, data and train."""

    family: str = "gpt"
    model: GPTConfig | BertConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.seq_len is None:
            self.train.seq_len = self.model.max_seq_len
        if self.train.seq_len > self.model.max_seq_len:
            raise LmforgeError(
                f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len}); "
                "lower the first or raise the second"
            )
        if self.family == "bert" and self.data.tokenizer == "char":
            raise LmforgeError(
                "data.tokenizer = char has no [CLS], [SEP] or [MASK] for an encoder: use wordpiece or bpe"
            )

    def require_family(self, family: str, verb: str, fix: str) -> None:
        """For verbs that serve one family: a config of another is a user mistake, named with the way out."""
        if self.family != family:
            raise LmforgeError(f"{verb} needs a {family} config, not a {self.family} one: {fix}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> RunConfig:
        if not isinstance(raw, dict):
            raise LmforgeError(f"{where} must be a mapping with sections family, model, data, train")
        unknown = set(raw) - {"family", "model", "data", "train"}
        if unknown:
            raise LmforgeError(
                f"{where}: unknown section {min(map(str, unknown))!r}; the sections are family, model, data, train"
            )
        family = raw.get("family", "gpt")
        if not isinstance(family, str) or family not in FAMILIES:
            raise LmforgeError(f"{where}: unknown family {family!r}; known: {', '.join(FAMILIES)}")
        sections = {"model": FAMILIES[family], "data": DataConfig, "train": TrainConfig}
        built = {name: _build(kind, raw.get(name) or {}, name, where) for name, kind in sections.items()}
        return cls(family=family, **built)


def _build(kind: type, values: dict, section: str, where: str):
    if not isinstance(values, dict):
        raise LmforgeError(f"{where}: section {section!r} must be a mapping of field: value")
    known = {f.name for f in fields(kind)}
    for key in values:
        if key not in known:
            raise LmforgeError(
                f"{where}: unknown key {section}.{key}; valid keys of {section}: {', '.join(sorted(known))}"
            )
    return kind(**values)


def shipped_configs() -> dict[str, Path]:
    """The configs that travel inside the package, by name."""
    folder = resources.files("lmforge") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)  # ValueError: 2001-13-45 as a date; deep nesting


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except YAML_ERRORS:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    """Applies `section.key=value` (or `key=value` when the key names one field only) to a raw config dict."""
    if "=" not in assignment:
        raise LmforgeError(f"--set {assignment!r}: write it as key=value, for example train.lr=3e-4")
    key, text = assignment.split("=", 1)
    key = key.strip()
    if "." in key:
        section, name = key.split(".", 1)
    else:
        model = FAMILIES.get(raw.get("family", "gpt"), GPTConfig)
        owners = [
            s for s, kind in (("model", model), ("data", DataConfig), ("train", TrainConfig)) if name_in(kind, key)
        ]
        if len(owners) != 1:
            hint = "no section has it" if not owners else f"it is in {' and '.join(owners)}"
            raise LmforgeError(f"--set {key}: {hint}; write section.key, for example train.lr=3e-4")
        section, name = owners[0], key
    if section == "family":
        raise LmforgeError("--set family is not an override; pick a config of that family instead")
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise LmforgeError(f"--set {key}: section {section!r} is not a mapping")
    raw[section][name] = _parse_value(text)


def name_in(kind: type, key: str) -> bool:
    return key in {f.name for f in fields(kind)}


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A shipped config by name or a YAML file by path, with `key=value` overrides applied on top."""
    shipped = shipped_configs()
    path = shipped.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise LmforgeError(
            f"config {name_or_path!r} not found: give a YAML file or one of {', '.join(sorted(shipped))} "
            "(lmforge configs lists them)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except YAML_ERRORS as e:  # UnicodeDecodeError is a ValueError
        raise LmforgeError(f"{path}: not valid YAML ({(str(e) or type(e).__name__).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise LmforgeError(f"{path}: a config is a mapping with sections family, model, data, train")
    for assignment in overrides:
        apply_override(raw, assignment)
    return RunConfig.from_dict(raw, where=str(path) if name_or_path not in shipped else name_or_path)
