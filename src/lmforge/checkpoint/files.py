"""Checkpoints: a directory with config, safetensors weights, tokenizer and the state to resume training exactly.

A checkpoint is complete or absent: it is written under a temporary name, fsynced, then renamed; the `latest`
pointer is updated last. No pickles: tensors go to safetensors, everything else to JSON/YAML.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.atomic import TMP, fsync_dir, write_text_atomic
from lmforge.config import YAML_ERRORS, RunConfig, TaskConfig
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

CONFIG, WEIGHTS, TOKENIZER = "config.yaml", "model.safetensors", "tokenizer.json"
STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
REQUIRED = (CONFIG, WEIGHTS, TOKENIZER)
PREFIX = "step-"
EXTRA_SECTIONS = ("task", "finetune", "quantization")


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors with tied weights stored once (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.detach().contiguous().cpu()
    return out


def optimizer_to_flat(optimizer: torch.optim.Optimizer | dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Splits an optimizer state dict (or an optimizer's) into tensors (for safetensors) and plain values (for JSON)."""
    state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, values in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.contiguous().cpu()
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def optimizer_from_flat(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {int(idx): dict(values) for idx, values in plain["state"].items()}
    for name, tensor in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = tensor
    return {"state": state, "param_groups": plain["param_groups"]}


def step_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"{PREFIX}{step:06d}"


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module | dict[str, torch.Tensor],
    cfg: RunConfig,
    tokenizer: Tokenizer,
    state_tensors: dict[str, torch.Tensor] | None = None,
    state: dict | None = None,
    keep_last: int = 3,
    extra: dict | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Writes OUT/step-NNNNNN atomically, points OUT/latest at it and keeps the newest keep_last checkpoints.
    files: text files of a task's own to write beside the weights (a chat model's chat_template.jinja).

    `model` is a module, or its full weights when they had to be gathered from shards first; `extra` holds config
    sections beyond the run's (a fine-tuned model's task and finetune)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = step_dir(out_dir, step)
    tmp = out_dir / f"{TMP}{final.name}.{os.getpid()}"
    _remove_stale(out_dir)
    tmp.mkdir()
    try:
        (tmp / CONFIG).write_text(yaml.safe_dump({**cfg.to_dict(), **(extra or {})}, sort_keys=False), encoding="utf-8")
        weights = model if isinstance(model, dict) else unique_state_dict(model)
        save_file(weights, tmp / WEIGHTS, metadata={"format": "pt", "lmforge_step": str(step)})
        tokenizer.save(tmp / TOKENIZER)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if state is not None:
            save_file(state_tensors or {}, tmp / STATE_TENSORS)
            (tmp / STATE_JSON).write_text(json.dumps(state), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb+") as handle:
                os.fsync(handle.fileno())
        fsync_dir(tmp)
    except BaseException:  # a full disk, an interrupt: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = out_dir / f"{TMP}{final.name}.old.{os.getpid()}"
    if final.exists():  # the same step saved again: a directory cannot be renamed onto a full one
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(out_dir)
    shutil.rmtree(aside, ignore_errors=True)
    write_text_atomic(out_dir / "latest", final.name + "\n")
    for old in sorted(out_dir.glob(f"{PREFIX}*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _remove_stale(out_dir: Path) -> None:
    """Removes the temporaries left by this process or by dead ones (a run killed while saving a checkpoint or the
    `latest` pointer; each ends in its writer's pid); another live process's are its own business."""
    for stale in out_dir.glob(f"{TMP}*"):
        pid = stale.name.rsplit(".", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def find_latest(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in out_dir, or None; half-written ones are skipped with a warning."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    for tmp in out_dir.glob(f"{TMP}{PREFIX}*"):
        warnings.warn(f"ignoring half-written checkpoint {tmp} (a run stopped while saving)", stacklevel=2)
    pointer = out_dir / "latest"
    if pointer.is_file():
        named = out_dir / pointer.read_text(encoding="utf-8").strip()
        if named.is_dir() and all((named / f).is_file() for f in REQUIRED):
            return named
    complete = [d for d in sorted(out_dir.glob(f"{PREFIX}*")) if all((d / f).is_file() for f in REQUIRED)]
    return complete[-1] if complete else None


@dataclass
class Loaded:
    """A model ready for inference, as every verb receives it from `lmforge.load`, whatever the path held."""

    model: nn.Module  # the backbone (GPT, Bert), or with a task, the task's model around its `backbone`
    tokenizer: Tokenizer
    config: RunConfig  # the backbone's family, architecture and (for a run of ours) data and train settings
    task: TaskConfig | None = None  # what a fine-tuned model predicts; None for a pretrained one
    path: Path | None = None  # the checkpoint directory read (OUT/step-NNNNNN for a run)
    pooler: dict[str, torch.Tensor] | None = None  # a BERT pooler the model does not hold: a classifier starts there
    dtype: str = "fp32"  # the linear layers' weights: fp32, or int8 / bf16 (lmforge quantize, or --dtype)


@dataclass
class Checkpoint:
    path: Path
    cfg: RunConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    state_tensors: dict[str, torch.Tensor]
    state: dict | None
    extra: dict  # the sections beyond the run's: task and finetune in a fine-tuned one, quantization in a quantized one


def load_checkpoint(path: str | Path, with_state: bool = False) -> Checkpoint:
    """Reads a checkpoint directory, with one clear error for each way it can be incomplete or damaged."""
    path = Path(path)
    if not path.is_dir():
        raise LmforgeError(f"checkpoint {path} not found: give a directory written by lmforge train (OUT/step-NNNNNN)")
    latest = find_latest(path) if not (path / CONFIG).exists() else None
    path = latest or path
    for name in REQUIRED:
        if not (path / name).is_file():
            raise LmforgeError(f"checkpoint {path} is missing {name}: it is incomplete; use another step directory")
    try:
        raw = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
    except YAML_ERRORS as e:
        raise LmforgeError(
            f"{path / CONFIG} is not valid YAML: {(str(e) or type(e).__name__).splitlines()[0]}"
        ) from None
    extra = {k: raw.pop(k) for k in EXTRA_SECTIONS if isinstance(raw, dict) and k in raw}
    try:
        cfg = RunConfig.from_dict(raw, where=str(path / CONFIG))
    except LmforgeError as e:  # a field's error names the field; say which file holds it
        raise LmforgeError(str(e) if str(path) in str(e) else f"{path / CONFIG}: {e}") from None
    weights = _read_safetensors(path / WEIGHTS)
    state_tensors, state = {}, None
    if with_state and (path / STATE_JSON).is_file():
        state_tensors = _read_safetensors(path / STATE_TENSORS)
        state = _read_state(path / STATE_JSON)
    tokenizer = Tokenizer.load(path / TOKENIZER)
    if tokenizer.vocab_size > cfg.model.vocab_size:  # its last ids would index past the embedding table
        raise LmforgeError(
            f"{path / TOKENIZER} has {tokenizer.vocab_size} tokens but the model has {cfg.model.vocab_size} embedding "
            "rows: the tokenizer belongs to another model; use the checkpoint's own tokenizer.json"
        )
    return Checkpoint(path, cfg, weights, tokenizer, state_tensors, state, extra)


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """The same text to the same ids: what a resumed model must keep reading."""
    return a.backend.to_str() == b.backend.to_str()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise LmforgeError(f"{path} is damaged or not a safetensors file ({e}); use another checkpoint") from None


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise LmforgeError(f"{path} is damaged ({e}); resume from another checkpoint") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "rng", "sampler"} <= state.keys():
        raise LmforgeError(f"{path} is damaged (it lacks an entry step, optimizer, rng or sampler); use another")
    return state


def check_weights(expected: dict[str, torch.Size], weights: dict[str, torch.Tensor], where: str) -> None:
    """Names the first missing, unexpected, wrong-shaped or non-finite tensor (a damaged or foreign file)."""
    for name, shape in expected.items():
        if name not in weights:
            raise LmforgeError(f"{where}: tensor {name!r} is missing (expected shape {tuple(shape)})")
        if weights[name].shape != shape:
            raise LmforgeError(
                f"{where}: tensor {name!r} has shape {tuple(weights[name].shape)}, expected {tuple(shape)}"
            )
        if weights[name].is_floating_point() and not torch.isfinite(weights[name]).all():
            raise LmforgeError(f"{where}: tensor {name!r} holds NaN or infinite values; the file is damaged")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise LmforgeError(f"{where}: unexpected tensor {extra[0]!r}; the checkpoint does not match its config")


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Loads weights strictly, after check_weights; a quantized layer's int8 or bf16 tensor must come as such (a
    copy would convert anything silently)."""
    expected = unique_state_dict(model)
    check_weights({k: v.shape for k, v in expected.items()}, weights, where)
    for name, tensor in expected.items():
        if tensor.dtype != torch.float32 and weights[name].dtype != tensor.dtype:
            raise LmforgeError(
                f"{where}: tensor {name!r} is {weights[name].dtype}, expected {tensor.dtype}; the file is damaged"
            )
    model.load_state_dict(weights, strict=False)
