"""Inference with each Transformer stack's layers compiled by torch.compile (`--compile`, `compile_layers`).

Run eagerly, an int8 layer is some twenty small operations around its product (rounding each token's row, scaling
the int32 sums back), and every norm, activation and residual sum is one more pass over memory with one more call
from Python. Inductor fuses the operations between two products into one C++ loop and runs the stack without
Python, so what is left is the products and attention: on the 2-core EPYC, GPT-2 small's int8 greedy decoding at
batch 1 goes from 161 to 292 tokens/s and all-MiniLM-L6-v2's int8 encoding from 921 to 1,389-1,462 sentences/s
(docs/quantization.md). bf16 and fp32 layers compile too, but run slower so: their products lose oneDNN's packed
copy of the weights.

Shapes are dynamic (the batch, the length, the tokens cached so far), so one compilation serves a whole run; a
token at a time (decoding) and a prompt at a time are two. The first call of each takes seconds (tens of seconds for
a GPT-2-sized model on two cores); Inductor keeps what it built in its cache (TORCHINDUCTOR_FX_GRAPH_CACHE, under
TORCHINDUCTOR_CACHE_DIR), so a second run starts sooner. A compiler that fails (no C++ compiler, an operation it
cannot trace) leaves one line saying why, and the model runs eagerly.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lmforge.kernels.bf16 import bf16_supported
from lmforge.kernels.int8 import fbgemm_runs, int_mm_works, u8_product_works
from lmforge.kernels.native import u8_gemv_runs
from lmforge.nn.blocks import TransformerStack


def inductor_cache_dir() -> str:
    """Where Inductor caches compiled graphs between runs."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return cache_dir()
    except ImportError:  # another torch layout
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's cache directory")


@functools.cache
def cache_tag() -> str:
    """lmforge's part of torch.compile's cache key: a digest of lmforge.kernels' sources. torch's caches key a graph on
    what Dynamo traced, not on the Python of a custom operator's backward, which AOTAutograd traces afterwards
    (onednn_linear's): without this tag a warm cache kept serving a backward from before an update of lmforge."""
    folder = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.py"), *folder.glob("*.c")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"lmforge-{digest.hexdigest()[:16]}"


def tag_compile_caches() -> None:
    """Adds cache_tag() to torch.compile's cache key tag for this process (after a tag of the user's, if any): called
    wherever lmforge's operators enter a model or a compiled function."""
    from torch.compiler import config

    tag = cache_tag()
    if tag not in config.cache_key_tag.split("+"):
        config.cache_key_tag = f"{config.cache_key_tag}+{tag}" if config.cache_key_tag else tag


BACKEND = "inductor"  # tests swap in "aot_eager", which traces the same graphs without building C++
OPTIONS = {
    "size_asserts": False,  # no per-call check of each buffer's strides: a decoding step's Python is the cost
    # a value that two loops read (an activation, and its int8 range) is stored once, not computed twice: the GELU
    # ahead of an int8 layer, 800 rows of 1,536, takes 452 us rather than 725
    "realize_opcount_threshold": 4,
}
RECOMPILE_LIMIT = 64  # graphs per function: models, precisions and (prompt, token, batch) shapes each add some


@functools.cache
def _compiled(fn: Callable, backend: str) -> Callable:
    """One torch.compile per function, shared by every model: torch keeps its graphs per function, and each
    torch.compile call would count as a new backend that adds graphs of its own."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # a module left unchanged since the last call is checked at once, not attribute by attribute: a decoding step's
    # guards take 153 us rather than 416
    torch._dynamo.config.use_recursive_dict_tags_for_guards = True
    tag_compile_caches()
    return torch.compile(fn, dynamic=True, backend=backend, options=OPTIONS if backend == "inductor" else None)


class CompiledLayers:
    """A stack's method (`layers`, `packed_layers`) compiled, or run eagerly once the compiler has failed."""

    def __init__(self, stack: TransformerStack, name: str):
        self.stack, self.eager = stack, getattr(stack, name)
        self.compiled = _compiled(getattr(type(stack), name), BACKEND)  # called with the stack as its first argument
        self.failed, self.calls = False, 0

    def __call__(self, *args):
        if self.failed:
            return self.eager(*args)
        start = time.perf_counter()
        try:
            out = self.compiled(self.stack, *args)
        except torch._dynamo.exc.TorchDynamoException as e:
            cause = getattr(e, "inner_exception", None) or e  # the compiler's own error, not torch's wrapping
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            print(f"note: torch.compile failed ({type(cause).__name__}: {first}); running eagerly", file=sys.stderr)
            self.failed = True
            return self.eager(*args)
        self.calls += 1
        if self.calls == 1:
            print(
                f"note: torch.compile built the layers in {time.perf_counter() - start:.1f} s (cached in "
                f"{inductor_cache_dir()})",
                file=sys.stderr,
            )
        return out


def compile_layers(model: nn.Module) -> nn.Module:
    """Compiles, in place, the layers of every Transformer stack of model (the blocks and final norm, padded or
    packed) and returns model. Parameters and state-dict keys stay; outputs change by rounding only. It sets two
    torch._dynamo settings for the process: a recompile limit of at least 64 and guards by dict tags."""
    (
        int_mm_works(),
        u8_product_works(),
        fbgemm_runs(),
        u8_gemv_runs(),
        bf16_supported(),
    )  # asked now, so that the compiler reads their answers as constants
    for module in model.modules():
        if isinstance(module, TransformerStack) and not isinstance(module.layers, CompiledLayers):
            module.layers = CompiledLayers(module, "layers")
            module.packed_layers = CompiledLayers(module, "packed_layers")
    return model
