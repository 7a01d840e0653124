"""`train.compile`: the training step's loss compiled with torch.compile, its compilation timed and its failure
survived.

torch.compile traces the forward and the loss into one graph and AOTAutograd derives the backward's, so the whole
step runs compiled. The first call compiles; Inductor keeps what it built in its cache (on by default:
TORCHINDUCTOR_FX_GRAPH_CACHE, under TORCHINDUCTOR_CACHE_DIR), so a second run of the same model starts in seconds;
an update of lmforge's kernels compiles anew (their digest is in the cache key: kernels.compiled.cache_tag). Whether
it pays depends on the model: on char-small it did not (docs/benchmarks.md), on a GPT-2 shape it does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from lmforge.kernels.compiled import inductor_cache_dir
from lmforge.training.loop import log


def _backward_compiled_with_forward():
    """AOTAutograd compiles the backward at the first backward() by default, outside the guard below; this has it
    compile with the forward (a private switch of torch's, where this version has it)."""
    from torch._functorch import config

    if hasattr(config, "force_non_lazy_backward_lowering"):
        return config.patch(force_non_lazy_backward_lowering=True)
    return contextlib.nullcontext()


class CompiledLoss:
    """loss_fn(model, batch) under torch.compile. The first call compiles (its time is compile_s, and the log says
    it); a compiler that fails there (no C++ compiler, an operation it cannot trace) leaves one line saying why and
    the run continues eagerly. An error of the model itself then comes from the eager call, as without compile."""

    def __init__(self, loss_fn: Callable):
        self.eager = loss_fn
        self.fn: Callable | None = None
        self.compile_s: float | None = None

    def __call__(self, model, batch):
        if self.fn is not None:
            return self.fn(model, batch)
        start = time.perf_counter()
        compiled = torch.compile(self.eager)
        try:
            with _backward_compiled_with_forward():
                out = compiled(model, batch)
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back; the eager call re-raises real ones
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log(f"train.compile: torch.compile failed ({type(e).__name__}: {first[:200]}); training eagerly")
            self.fn = self.eager
            return self.eager(model, batch)
        self.compile_s = time.perf_counter() - start
        log(
            f"train.compile: compiled the step (forward, loss and backward) in {self.compile_s:.1f} s; cached in "
            f"{inductor_cache_dir()} for the next run"
        )
        self.fn = compiled
        return out
