"""A resumable checkpoint: weights, optimizer, random-number generators and data sampler, so that a run killed at any
step and resumed ends bitwise equal (on CPU) to one never stopped."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from lmforge.checkpoint.files import (
    Checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
    step_dir,
)
from lmforge.config import RunConfig
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.training import distributed


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    return tensors, plain


def restore_rng(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_state(
    out: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler,
    cfg: RunConfig,
    tokenizer: Tokenizer,
    keep_last: int,
    extra_config: dict | None = None,
    extra_state: dict | None = None,
) -> Path:
    """OUT/step-NNNNNN with everything a resume needs; extra_state holds a recipe's own plain values (JSON)."""
    weights, optimizer_state = distributed.full_state(model, optimizer)  # every rank: FSDP gathers the shards
    if not distributed.is_main():
        return step_dir(out, step)
    tensors, plain_optim = optimizer_to_flat(optimizer_state)
    rng_tensors, rng_plain = rng_state()
    sampler_state = sampler.state_dict()
    tensors.update(rng_tensors)
    tensors.update({f"sampler.{k}": v for k, v in sampler_state.items() if torch.is_tensor(v)})
    state = {
        "step": step,
        "optimizer": plain_optim,
        "rng": rng_plain,
        "sampler": {k: v for k, v in sampler_state.items() if not torch.is_tensor(v)},
        **(extra_state or {}),
    }
    return save_checkpoint(out, step, weights, cfg, tokenizer, tensors, state, keep_last, extra_config)


def restore_state(ckpt: Checkpoint, cfg: RunConfig, model: torch.nn.Module, optimizer, sampler) -> int:
    """Loads a resumable checkpoint into a freshly built run; returns its step."""
    if ckpt.cfg.model != cfg.model:
        raise LmforgeError(
            f"cannot resume from {ckpt.path}: its model config differs from this run's; "
            "resume with the same model settings or choose a new --out"
        )
    if ckpt.state is None:
        raise LmforgeError(f"cannot resume from {ckpt.path}: it holds no training state (weights only)")
    optimizer_state = optimizer_from_flat(ckpt.state_tensors, ckpt.state["optimizer"])
    distributed.load_full_state(model, optimizer, ckpt.weights, optimizer_state, str(ckpt.path))
    sampler_state = dict(ckpt.state["sampler"])
    sampler_state.update({k[len("sampler.") :]: v for k, v in ckpt.state_tensors.items() if k.startswith("sampler.")})
    sampler.load_state_dict(sampler_state)
    restore_rng(ckpt.state_tensors, ckpt.state["rng"])
    return ckpt.state["step"]
