"""A model's linear layers (and optionally its embedding tables) in int8 or bf16, in place, from outside the model.

What stays fp32, and why: norms, softmax and the residual stream (they are cheap to read and sensitive to
rounding); layers named in keep_fp32; and an embedding table that an LM head shares (tied). Such a head keeps its
fp32 weight: greedy decoding reads it through lmforge.kernels.argmax's int8 screen and confirms the winner in fp32,
so the chosen tokens are fp32's.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.kernels.bf16 import Bf16Embedding, Bf16Linear, bf16_supported
from lmforge.kernels.int8 import Int8Embedding, Int8Linear

DTYPES = ("fp32", "bf16", "int8")
LINEAR = {"int8": Int8Linear, "bf16": Bf16Linear}  # the dtypes a model's linear layers can be quantized to
EMBEDDING = {"int8": Int8Embedding, "bf16": Bf16Embedding}
QUANTIZED = (Int8Linear, Bf16Linear, Int8Embedding, Bf16Embedding)


@dataclass
class Quantization:
    """How a model was quantized: what a quantized checkpoint's config.yaml records in its `quantization` section,
    so that the loader rebuilds the same layers before reading the weights."""

    dtype: str
    keep_fp32: list[str] = field(default_factory=list)  # module names or glob patterns left in fp32
    embeddings: bool = False  # embedding tables quantized too (those no LM head shares)
    alpha: float = 0.5  # int8 smoothing's exponent (lmforge.kernels.int8), where calibration measured the inputs
    smoothed: list[str] = field(default_factory=list)  # the int8 layers calibration smoothed
    calibration: str | None = None  # what smoothing measured: a text file, "built-in" (kernels.calibration), or None

    def __post_init__(self) -> None:
        if self.dtype not in LINEAR:
            raise LmforgeError(f"quantization dtype {self.dtype!r}: give int8 or bf16")
        if not 0 <= self.alpha <= 1:
            raise LmforgeError(f"quantization alpha {self.alpha}: give a number in [0, 1]")
        self.keep_fp32, self.smoothed = list(self.keep_fp32), list(self.smoothed)

    def to_dict(self) -> dict:
        return asdict(self)


def check_dtype(dtype: str) -> None:
    """Refuses a dtype lmforge does not run, and bf16 on a CPU that cannot multiply it natively."""
    if dtype not in DTYPES:
        raise LmforgeError(f"--dtype {dtype}: give one of {', '.join(DTYPES)}")
    if dtype == "bf16" and not bf16_supported():
        raise LmforgeError(
            "--dtype bf16: this CPU has no native bf16 arithmetic (AVX-512 BF16 or AMX); use --dtype int8 or fp32"
        )


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED) for m in model.modules())


def quantize_model(
    model: nn.Module, q: Quantization, empty: bool = False, input_max: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """Replaces model's linear layers (nn.Linear and its subclasses) and, with q.embeddings, its embedding tables
    by q.dtype's, in place, and returns model. empty: layers of the right shapes and dtypes whose values a quantized
    checkpoint's weights will fill (nothing is rounded; q.smoothed says which int8 layers hold input scales).
    input_max: per layer name, the largest |x_j| calibration saw per input channel; int8 layers with one are
    smoothed, and their names are added to q.smoothed."""
    if is_quantized(model):
        raise LmforgeError("the model is already quantized: quantize its fp32 checkpoint instead")
    shared = _shared_tables(model)
    replaced = 0
    for name, module in list(model.named_modules()):
        if not name or _kept(name, q.keep_fp32):
            continue
        if isinstance(module, nn.Linear) and id(module.weight) not in shared:
            new = _linear(module, name, q, empty, input_max or {})
        elif q.embeddings and isinstance(module, nn.Embedding) and id(module.weight) not in shared:
            cls = EMBEDDING[q.dtype]
            new = cls(module.num_embeddings, module.embedding_dim) if empty else cls.from_embedding(module)
        else:
            continue
        _set_module(model, name, new)
        replaced += 1
    if not replaced:
        raise LmforgeError(f"the model has no linear layers to quantize{' outside --keep-fp32' if q.keep_fp32 else ''}")
    return model


def _linear(module: nn.Linear, name: str, q: Quantization, empty: bool, input_max: dict) -> nn.Module:
    """module's q.dtype layer: rounded from it, or empty for a checkpoint's values to fill."""
    shape = (module.in_features, module.out_features, module.bias is not None)
    if q.dtype == "bf16":
        return Bf16Linear(*shape) if empty else Bf16Linear.from_linear(module)
    if empty:
        return Int8Linear(*shape, smoothed=name in q.smoothed)
    if name in input_max:
        q.smoothed.append(name)
    return Int8Linear.from_linear(module, input_max.get(name), q.alpha)


def _kept(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns)


def _shared_tables(model: nn.Module) -> set[int]:
    """ids of the weights that an embedding table and a linear layer share (a tied LM head)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) in embeddings}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
