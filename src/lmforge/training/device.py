"""Where a run computes and in which precision: the device a --device names, bf16 autocast, batches moved there."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from lmforge.errors import LmforgeError
from lmforge.kernels.bf16 import bf16_supported


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_for(device: torch.device, dtype: str):
    """bf16 autocast (products in bf16, weights and their updates in fp32) when asked, and by default on a CUDA GPU
    that has it; fp32 otherwise. A CPU without native bf16 arithmetic would run bf16 slower than fp32: refused."""
    use_bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16 and device.type == "cpu" and not bf16_supported():
        raise LmforgeError(
            "train.precision bf16: this CPU has no native bf16 arithmetic (AVX-512 BF16 or AMX); use fp32"
        )
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def to_device(batch, device: torch.device):
    """A batch (a tuple or a dict of tensors) on the device."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return tuple(v.to(device, non_blocking=True) for v in batch)
