"""int8 weights and activations (W8A8, dynamic): a linear layer that reads a quarter of fp32's bytes.

Decoding on a CPU is bound by reading the weights. Each output channel (row of W) is rounded to int8 with a scale of
its own, W ~= s_w[:, None] * q, once, when the model is quantized; each row (token) of x is rounded the same way when
it arrives, x ~= s_x[:, None] * x_q. Then x W^T ~= s_x s_w^T * (x_q q^T), where x_q q^T is exact in int32 and runs
on the CPU's int8 dot-product instructions (AVX-512 VNNI through oneDNN's torch._int_mm). Rounding each side to
8 bits costs about 0.5% of a product's size; norms, softmax and the residual stream stay in fp32, outside these
layers.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def int_mm_works() -> bool:
    """torch._int_mm on the CPU, run by oneDNN (without it the product is a plain loop); checked once, on a tiny
    product, when first needed (not at import)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        a = torch.ones(1, 8, dtype=torch.int8)
        return bool(torch._int_mm(a, a.t()).item() == 8)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 rounding of each row: (q int8, scale fp32) with w ~= scale[:, None] * q."""
    scale = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows for activations, in fewer passes over x (it is rounded at every call): (x_q int8, scale (B, 1)).
    |x| * 127 / max|x| <= 127 and rounds to at most 127, so no clamp is needed."""
    peak = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
    return x.mul(127 / peak).round_().to(torch.int8), peak.div_(127)


def int8_product(x_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x_q q^T in int32 for int8 x_q (B, d) and q (N, d): oneDNN's VNNI kernel on the CPU; elsewhere (or without
    oneDNN) the same sums in fp32, exact while d * 127^2 stays below 2^24 and within fp32 rounding above."""
    if x_q.device.type == "cpu" and int_mm_works():
        return torch._int_mm(x_q, q.t())
    return x_q.float() @ q.float().t()


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as int8 rows and their fp32 scales and x rounded per row at run time.

    The state dict keeps nn.Linear's names: `weight` (int8), `bias` (fp32), plus `weight_scale` (fp32, one per
    output channel). Inference only: nothing here records a gradient."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The layer with linear's weights rounded to int8 (and its bias as it is)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.weight, layer.weight_scale = quantize_rows(linear.weight.detach().float())
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q, s_x = quantize_activations(x.reshape(-1, self.in_features).float())
        y = int8_product(x_q, self.weight).mul(s_x)  # int32 times fp32: fp32
        y = y.mul_(self.weight_scale) if self.bias is None else torch.addcmul(self.bias, y, self.weight_scale)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int8Embedding(nn.Module):
    """An embedding table held as int8 rows and their scales; a lookup returns the fp32 rows it rounds to."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, table: nn.Embedding) -> Int8Embedding:
        layer = cls(table.num_embeddings, table.embedding_dim)
        layer.weight, layer.weight_scale = quantize_rows(table.weight.detach().float())
        return layer.to(table.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float() * F.embedding(ids, self.weight_scale[:, None])
