"""Where a run computes and in which precision: the device a --device names, bf16 autocast, batches moved there."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from lmforge.errors import LmforgeError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_for(device: torch.device, dtype: str):
    """bf16 autocast on devices that support it (CUDA by default); fp32 otherwise."""
    use_bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def to_device(batch, device: torch.device):
    """A batch (a tuple or a dict of tensors) on the device."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return tuple(v.to(device, non_blocking=True) for v in batch)
