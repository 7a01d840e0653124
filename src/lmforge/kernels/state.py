"""When a copy kept beside a weight (oneDNN's packed layout, the int8 screen) has to be made again."""

from __future__ import annotations

import torch


def weight_state(weight: torch.Tensor) -> tuple:
    """Changes when the weight does: other storage, shape or strides, or an in-place update (its version counter;
    an inference tensor has none, and cannot change outside inference mode)."""
    try:
        version = weight._version
    except RuntimeError:
        version = -1
    return weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()), version
