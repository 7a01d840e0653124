"""A training run's config (family, model, data, train), loaded from YAML with `--set section.key=value` overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lmforge.config.fields import Checked, _fraction, _positive, merge_precision
from lmforge.config.models import FAMILIES, BertConfig, GPTConfig, T5Config
from lmforge.config.overrides import apply_override, build_section, missing, read_yaml
from lmforge.errors import LmforgeError
from lmforge.tokenizer import MAX_VOCAB_SIZE, min_vocab_size


@dataclass
class DataConfig(Checked):
    """Where the text comes from and how it becomes tokens."""

    section = "data"
    path: str | None = None  # a text, .jsonl or .csv file (prepared on the fly) or a prepared directory
    tokenizer: str = "char"  # char, bpe, wordpiece, unigram, or a path to a tokenizer.json
    vocab_size: int = 8192  # for a BPE or WordPiece tokenizer trained on the data; char and a tokenizer.json ignore it
    val_fraction: float = 0.1
    on_bad_line: typing.Literal["error", "skip"] = "error"  # a malformed .jsonl/.csv record: stop, or skip and count
    lowercase: bool = True  # WordPiece: lower-case the text (an uncased model)
    strip_accents: bool = True  # WordPiece: drop accents (café -> cafe)
    mlm_probability: float = 0.15  # masked language modelling: the share of tokens to predict
    whole_word_masking: bool = False  # MLM: select whole words, never a piece of one
    source: str | None = None  # parallel data: the source language (train.SOURCE files) or column (.tsv/.jsonl)
    target: str | None = None  # parallel data: the target language or column; both set = sequence-to-sequence
    redact_pii: bool = False  # replace e-mails, phones, IPs, card numbers, IBANs, URLs with passwords by <TYPE>
    dedup: typing.Literal["none", "exact", "near"] = "none"  # remove duplicate documents (near: MinHash + LSH)
    dedup_threshold: float = 0.8  # dedup near: the Jaccard similarity of word shingles that makes a duplicate

    _ranges = {
        "val_fraction": (_fraction, "a fraction in [0, 1)"),
        "mlm_probability": (lambda p: 0 < p < 1, "a probability in (0, 1), usually 0.15"),
        "dedup_threshold": (lambda t: 0 < t <= 1, "a Jaccard similarity in (0, 1], usually 0.8"),
    }

    def check(self) -> None:
        if (self.source is None) != (self.target is None):
            given, other = ("source", "target") if self.source is not None else ("target", "source")
            raise LmforgeError(
                f"data.{given} is set but data.{other} is not: parallel data needs both (--source, --target)"
            )
        if self.source is not None and self.source == self.target:
            raise LmforgeError(f"data.source and data.target are both {self.source!r}: name two languages or columns")

    def check_vocab_size(self, encoder: bool) -> None:
        """A BPE, WordPiece or Unigram trained here needs room for its base alphabet, and a size the trainer
        survives; an encoder's BPE holds RoBERTa's five special tokens instead of one, so the run config, which
        knows the family, calls this."""
        if self.tokenizer not in ("bpe", "wordpiece", "unigram"):
            return
        least = min_vocab_size(self.tokenizer, encoder)
        if not least <= self.vocab_size <= MAX_VOCAB_SIZE:
            holds = (
                "all 256 bytes and its special tokens"
                if self.tokenizer == "bpe"
                else f"{least - 1} special tokens + 1 character"
            )
            raise LmforgeError(
                f"data.vocab_size = {self.vocab_size} is out of range for data.tokenizer = {self.tokenizer}: give "
                f"{least} to {MAX_VOCAB_SIZE} (it holds {holds}; GPT-2 has 50257 tokens, BERT 30522)"
            )


@dataclass
class TrainConfig(Checked):
    """The optimization: AdamW, linear warmup + cosine (or inverse square root) decay, clipping, accumulation,
    evaluation, checkpoints; for sequence-to-sequence data, label smoothing and batches by token count."""

    section = "train"
    out: str = "runs/gpt"
    batch_size: int = 8
    batch_tokens: int = (
        0  # parallel data: batches of sentence pairs up to this many padded tokens; 0 = batch_size pairs
    )
    seq_len: int | None = None  # the model's max_seq_len when left out
    grad_accum_steps: int = 1
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    schedule: typing.Literal["cosine", "inverse_sqrt"] = "cosine"  # inverse_sqrt: the original Transformer's
    label_smoothing: float = 0.0  # sequence-to-sequence: the probability mass spread over the vocabulary
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
    grid_intensity: float = 0.4  # kg CO2 per kWh of the electricity, for the energy figures in metrics.jsonl
    init: str | None = None  # continued pretraining: start from this checkpoint (its weights, tokenizer, architecture)
    add_tokens: str | None = None  # with init: a file of domain tokens (one a line) added to its vocabulary
    parallel: typing.Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate the model, or shard it (FSDP)
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"
    dtype: typing.Literal["auto", "fp32", "bf16"] = "auto"  # bf16: autocast, fp32 master weights (CPU: AVX-512 BF16)
    precision: typing.Literal["auto", "fp32", "bf16"] | None = None  # another name for dtype; given, it sets dtype
    compile: bool = False
    progress: bool = True

    _ranges = {
        "batch_size": (_positive, "must be at least 1"),
        "batch_tokens": (lambda v: v >= 0, "must be >= 0 (0 = batch_size pairs)"),
        "grid_intensity": (lambda v: v >= 0, "kg CO2 per kWh, >= 0 (about 0.4 on average; 0.02-0.05 for hydro)"),
        "label_smoothing": (_fraction, "a probability in [0, 1), usually 0.1"),
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
        merge_precision(self)
        if self.add_tokens is not None and self.init is None:
            raise LmforgeError("train.add_tokens (--add-tokens) grows a pretrained vocabulary: give --init too")
        if self.seq_len is not None and self.seq_len <= 0:
            raise LmforgeError(f"train.seq_len = {self.seq_len} is out of range: must be positive")


@dataclass
class RunConfig:
    """Everything a training run needs; a YAML file has the sections family, model, data and train."""

    family: str = "gpt"
    model: GPTConfig | BertConfig | T5Config = field(default_factory=GPTConfig)
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
        if self.family == "t5" and self.data.tokenizer == "char":
            raise LmforgeError(
                "data.tokenizer = char has no pad, end or sentinel tokens for a t5 model: use bpe or wordpiece"
            )
        self.data.check_vocab_size(encoder=self.family in ("bert", "t5"))  # both train with the encoder's specials

    def require_family(self, family: str | tuple[str, ...], verb: str, fix: str) -> None:
        """For verbs that serve some families: a config of another is a user mistake, named with the way out."""
        families = (family,) if isinstance(family, str) else family
        if self.family not in families:
            raise LmforgeError(f"{verb} needs a {' or '.join(families)} config, not a {self.family} one: {fix}")

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
        built = {name: build_section(kind, raw.get(name) or {}, name, where) for name, kind in sections_of(raw).items()}
        return cls(family=family, **built)


def shipped_configs() -> dict[str, Path]:
    """The configs that travel inside the package, by name."""
    folder = resources.files("lmforge") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def sections_of(raw: dict) -> dict[str, type]:
    """The dataclass of each section a run config's YAML may have."""
    return {"model": FAMILIES.get(raw.get("family", "gpt"), GPTConfig), "data": DataConfig, "train": TrainConfig}


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A shipped config by name or a YAML file by path, with `key=value` overrides applied on top."""
    shipped = shipped_configs()
    path = shipped.get(name_or_path) or Path(name_or_path)
    if not path.is_file():
        raise missing(path, f"a YAML file or one of {', '.join(sorted(shipped))} (lmforge configs lists them)")
    raw = read_yaml(path, "family, model, data, train")
    for assignment in overrides:
        apply_override(raw, assignment, sections_of(raw))
    return RunConfig.from_dict(raw, where=str(path) if name_or_path not in shipped else name_or_path)
