"""The affine map y = x W^T + b, run by oneDNN when nothing needs its gradient on CPU.

Decoding a token is one matrix-vector product per weight matrix, so its speed is the rate at which the weights are
read. torch's fp32 CPU product (MKL) runs a matrix-vector product on one thread; oneDNN's splits it over torch's
threads, and reads the weights about twice as fast on a 2-core AMD EPYC (batch 1 to 8). oneDNN's kernel has no
backward, so training keeps F.linear; the weights, their layout and the state dict are those of nn.Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:
    _onednn_linear = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
except (AttributeError, RuntimeError):  # a build without the op
    _onednn_linear = None


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """fp32 CPU tensors (any strides, but a contiguous bias: the op ignores a bias's strides), no gradient to record,
    no autocast, and not under compile (Inductor lowers the op only for frozen weights)."""
    if _onednn_linear is None or x.device.type != "cpu" or x.dim() < 2 or not x.dtype == weight.dtype == torch.float32:
        return False
    if bias is not None and not bias.is_contiguous():
        return False
    tracked = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if tracked and torch.is_grad_enabled():
        return False
    return not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN where it applies."""
    if _onednn_applies(x, weight, bias):
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and initialization) whose inference runs `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
