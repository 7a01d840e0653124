"""Models built for their shapes only: on the meta device, with no memory and without their initialization."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

# torch.nn.init's functions and the tensor methods they call: on a meta tensor each is a Python decomposition whose
# first call imports torch._dynamo, 2 s of `lmforge estimate`'s 5 on a slow CPU, to fill values a meta tensor lacks
INITS = frozenset(
    {"normal_", "uniform_", "trunc_normal_", "constant_", "zeros_", "ones_", "zero_", "fill_", "xavier_uniform_",
     "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_"}
)  # fmt: skip


class _SkipInit(TorchFunctionMode):
    """Returns a meta tensor from its initialization unchanged; every other call runs as it is."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", None) in INITS and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def on_meta(family: str, model_cfg: object) -> torch.nn.Module:
    """The family's model for model_cfg with every parameter on the meta device, for counting and estimating."""
    from lmforge.models import MODELS

    with torch.device("meta"), _SkipInit():
        return MODELS[family](model_cfg)
