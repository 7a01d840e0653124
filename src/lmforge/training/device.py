"""Where a run computes and in which precision: the device a --device names, bf16 autocast, batches moved there."""

from __future__ import annotations

import ctypes
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


def run_precision(device: torch.device, dtype: str) -> str:
    """The precision a config's dtype (auto, fp32, bf16) computes in on device: bf16 when asked, and by default on a
    CUDA GPU that has it; fp32 otherwise."""
    use_bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return "bf16" if use_bf16 else "fp32"


def autocast_for(device: torch.device, dtype: str):
    """bf16 autocast (products in bf16, weights and their updates in fp32) where run_precision says bf16. A CPU
    without native bf16 arithmetic would run bf16 slower than fp32: refused."""
    use_bf16 = run_precision(device, dtype) == "bf16"
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


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Has glibc keep the memory a training step frees for the next step instead of handing it back to the system.

    A step allocates and frees the same activations every time. By default glibc serves blocks over 128 KB-32 MB
    with fresh pages (mmap) and returns freed memory at the heap's top, so every step page-faults its activations in
    again: on char-small that doubled the time of a layer norm, product, GELU and product in a row (1.24 -> 0.60 ms).
    The cost: the process keeps its peak resident set until it exits. False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols, the C library's among them
    except (OSError, AttributeError):
        return False
    settings = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))
    return all([mallopt(option, value) == 1 for option, value in settings])  # each tried, whatever the others do
