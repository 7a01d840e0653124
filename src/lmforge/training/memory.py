"""Where a training run's memory goes: the peak, split into weights, gradients, optimizer state and activations.

Weights, gradients and optimizer state are counted from their tensors; activations are what the peak holds beyond
them (with temporaries and, under DDP, the gradient buckets). On CUDA the peak is torch's max allocated; on CPU it is
the process's peak resident set, whose baseline at the first step (interpreter, libraries, data) is reported apart.
"""

from __future__ import annotations

import ctypes
import os
import resource
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lmforge.errors import LmforgeError
from lmforge.models import on_meta

MB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Returns freed heap pages to the system (glibc), so that new activations show as RSS growth rather than reuse
    what is already resident; then resets the peak RSS (VmHWM, Linux >= 4.0) to the current RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux; since the process began


def _nbytes(tensors) -> int:
    """Bytes held on this rank (the local shard of a DTensor)."""
    return sum(t.to_local().nbytes if hasattr(t, "to_local") else t.nbytes for t in tensors)


class MemoryMeter:
    """Created just before the first step; split() gives the MB of each part so far."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.model, self.optimizer, self.device = model, optimizer, device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = 0
        else:
            _reset_peak_rss()
            self.baseline = _rss()
        self.reported = False

    def report(self, final: bool) -> dict[str, float]:
        """The split for the log's first record and its last ({} in between)."""
        if self.reported and not final:
            return {}
        self.reported = True
        return self.split()

    def split(self) -> dict[str, float]:
        params = list(self.model.parameters())  # tied weights once
        weights = _nbytes(params)
        grads = _nbytes(p for p in params if p.requires_grad)  # they live from backward to zero_grad, as large
        optim = _nbytes(v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
        if self.device.type == "cuda":
            peak, other = torch.cuda.max_memory_allocated(self.device), 0
        else:
            peak, other = _peak_rss(), self.baseline - weights
        return {
            "peak_mem_mb": peak / MB,
            "mem_weights_mb": weights / MB,
            "mem_grads_mb": grads / MB,
            "mem_optimizer_mb": optim / MB,
            "mem_activations_mb": max(0, peak - other - weights - grads - optim) / MB,
            "mem_other_mb": other / MB,
        }


def summary(split: dict[str, float], device: torch.device) -> str:
    """One line: the peak, its parts, and what to shrink first."""
    parts = {
        "activations": ("mem_activations_mb", "lower train.batch_size or seq_len (raise grad_accum_steps to keep it)"),
        "optimizer state": ("mem_optimizer_mb", "shard it with train.parallel=fsdp over several devices"),
        "weights": ("mem_weights_mb", "use a smaller model or train.parallel=fsdp"),
        "gradients": ("mem_grads_mb", "use a smaller model or train.parallel=fsdp"),
    }
    largest = max(parts, key=lambda k: split[parts[k][0]])
    kind = "allocated on " + str(device) if device.type == "cuda" else "resident (CPU)"
    other = f" + other {split['mem_other_mb']:.1f} (Python, libraries, data)" if split["mem_other_mb"] else ""
    return (
        f"memory: peak {split['peak_mem_mb']:.1f} MB {kind} = weights {split['mem_weights_mb']:.1f} + gradients "
        f"{split['mem_grads_mb']:.1f} + optimizer {split['mem_optimizer_mb']:.1f} + activations "
        f"{split['mem_activations_mb']:.1f}{other}; largest part: {largest} ({parts[largest][1]})"
    )


TRAINING_BYTES = 16  # per parameter, in fp32: the weight, its gradient and AdamW's two moments
ALLOW_LARGE = "LMFORGE_ALLOW_LARGE"  # =1: train a model even when check_fits says it cannot fit


def parameter_count(family: str, model_cfg) -> int:
    """The parameters a config's model has, counted on the meta device: its shapes without its memory."""
    return on_meta(family, model_cfg).num_parameters()


def device_memory(device: torch.device) -> tuple[int, str]:
    """The bytes of memory training on device can use, and what they are."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"{device} ({props.name})"
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine"


def check_fits(n_parameters: int, device: torch.device, shards: int = 1) -> None:
    """Refuses, before anything is allocated, a model whose weights, gradients and optimizer state alone exceed the
    device's memory: it would spend minutes allocating, then fail with a raw out-of-memory error or be killed."""
    need = TRAINING_BYTES * n_parameters / shards
    have, where = device_memory(device)
    if need > have and os.environ.get(ALLOW_LARGE) != "1":
        raise LmforgeError(
            f"the model has {n_parameters:,} parameters: training them needs {need / 1e9:.1f} GB (weights, gradients "
            f"and AdamW state, {TRAINING_BYTES} bytes each, before activations), more than the {have / 1e9:.1f} GB of "
            f"{where}; make it smaller (model.n_layer, model.d_model), or set {ALLOW_LARGE}=1 to try anyway"
        )


class TensorPeak(TorchDispatchMode):
    """The peak bytes of live tensor storage while it is active, counted as CUDA's max_memory_allocated counts them:
    every storage an operator creates (parameters, gradients, optimizer state, activations, temporaries) from its
    creation to its release, plus `held`, what lives already. On a CPU, the process's resident set grows beyond this
    by what the allocator keeps of freed memory and by the runtime's own buffers; this is the part a model's shape
    decides, the one `lmforge estimate` predicts. Every operator pays a Python call: for a measuring run, not training.
    """

    def __init__(self, held: int = 0):
        super().__init__()
        self.live = self.peak = held
        self.storages: set[int] = set()

    def _released(self, key: int, nbytes: int) -> None:
        self.storages.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.storages:
                    self.storages.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._released, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out
