"""Conversion between lmforge checkpoints and Hugging Face model directories, both ways, each written atomically.

A fine-tuned model crosses as the task's transformers class (BertForSequenceClassification, ...) with its labels."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from lmforge.atomic import check_output_dir
from lmforge.checkpoint.files import WEIGHTS, find_latest, save_checkpoint, unique_state_dict
from lmforge.checkpoint.hub import load_hf, resolve
from lmforge.checkpoint.loader import load
from lmforge.checkpoint.lock import run_lock
from lmforge.errors import LmforgeError
from lmforge.interop.hf import to_hf
from lmforge.interop.hf_config import family_of, hf_config
from lmforge.interop.hf_t5 import hf_t5_config, t5_to_hf
from lmforge.interop.hf_tokenizer import write_hf_tokenizer
from lmforge.interop.hf_xlnet import hf_xlnet_config, xlnet_to_hf


def convert_from_hf(source: str | Path, out: str | Path, allow_pickle: bool = False) -> Path:
    """Writes an HF model directory as an lmforge checkpoint (OUT/step-000000, OUT/latest), atomically; a task
    model's checkpoint has the task section a fine-tuned one has."""
    check_output_dir(out, {"--from-hf": source})
    with run_lock(out):
        if find_latest(out) is not None:  # its `latest` would name the import instead of the run's own checkpoint
            raise LmforgeError(f"{out} already holds a checkpoint: give a new --out for the imported model")
        loaded = load_hf(resolve(source), allow_pickle)
        loaded.config.train.out = str(out)
        extra = {"task": dataclasses.asdict(loaded.task)} if loaded.task is not None else None
        return save_checkpoint(out, 0, loaded.model, loaded.config, loaded.tokenizer, extra=extra)


def convert_to_hf(checkpoint: str | Path, out: str | Path, allow_pickle: bool = False) -> Path:
    """Writes a checkpoint as an HF model directory that transformers' AutoModel* and AutoTokenizer load offline;
    a fine-tuned one as its task's class, which AutoModelFor<Task> loads.

    The directory is written under a temporary name and renamed, so it is complete or absent."""
    check_output_dir(out, {"the checkpoint": checkpoint}, flag="--to-hf")
    loaded = load(checkpoint, allow_pickle=allow_pickle)
    task, tokenizer = loaded.task, loaded.tokenizer
    backbone = loaded.model.backbone if task is not None else loaded.model
    family = family_of(backbone.cfg) if backbone.family not in ("t5", "xlnet") else None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LmforgeError(f"{out} exists and is not empty: give a new directory for the Hugging Face model")
    if backbone.family == "xlnet" and task is not None:
        raise LmforgeError(f"{checkpoint} is a fine-tuned XLNet: lmforge exports a pretrained XLNet only")
    if backbone.family == "t5":  # T5 and XLNet have tables of their own
        config, weights = hf_t5_config(backbone.cfg), t5_to_hf(backbone.cfg, unique_state_dict(loaded.model))
    elif backbone.family == "xlnet":
        config, weights = hf_xlnet_config(backbone.cfg), xlnet_to_hf(backbone.cfg, unique_state_dict(loaded.model))
        token_id = tokenizer.backend.token_to_id
        special = {"pad": tokenizer.pad_id, "bos": token_id("<s>"), "eos": token_id("</s>")}
        config |= {f"{role}_token_id": i for role, i in special.items() if i is not None}
    else:
        special = {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "eos": tokenizer.eos_id}
        config = hf_config(family, backbone.cfg, special, task)
        head_model = config["architectures"][0] != family.architectures[0]
        weights = to_hf(family, unique_state_dict(loaded.model), head_model, task and task.task)
    tmp = out.with_name(f".tmp-{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(weights, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        segments = getattr(backbone.cfg, "type_vocab_size", 1) > 1 or backbone.family == "xlnet"
        write_hf_tokenizer(tokenizer, tmp, backbone.cfg.max_seq_len, segments, cls_last=backbone.family == "xlnet")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
