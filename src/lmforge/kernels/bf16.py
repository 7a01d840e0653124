"""bf16 weights with fp32 around them: a linear layer that reads half of fp32's bytes.

W is stored in bfloat16 (8 bits of mantissa, fp32's range); x is rounded to bf16 as it enters and the product comes
back in fp32. On CPUs with AVX-512 BF16 oneDNN multiplies bf16 pairs and accumulates in fp32, from a copy of W in its
own blocked layout (made on first use; without it oneDNN reorders W on every call, which costs more than the bytes
saved). A decoding step's single row goes to lmforge's C kernel instead (lmforge.kernels.native.bf16_gemv), which
streams the bf16 weight once, at 1.5x oneDNN's rate for one row on a 2-core Zen 4. Everything outside these layers
(norms, softmax, the residual stream) stays in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.kernels.native import bf16_gemv, bf16_gemv_runs
from lmforge.kernels.once import asked_once
from lmforge.kernels.state import weight_state


@asked_once
def bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Bf16Linear(nn.Module):
    """y = x W^T + b with W in bf16, b and y in fp32. Inference only. The state dict keeps nn.Linear's names."""

    _packed: tuple[tuple, torch.Tensor] | None = None  # (weight_state of the weight, oneDNN's blocked copy)

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Bf16Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.weight = linear.weight.detach().to(torch.bfloat16)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._outputs(x, slice(None), packed=True)

    def rows(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """forward(x)[..., rows], computing only those outputs (cross-attention reads q, and k and v, from one
        fused layer); from the plain bf16 weight: a slice of the blocked copy is no weight oneDNN can read."""
        return self._outputs(x, rows, packed=False)

    def _outputs(self, x: torch.Tensor, rows: slice, packed: bool) -> torch.Tensor:
        flat, weight = x.reshape(-1, self.in_features), self.weight[rows]
        # compiled, asked first, so that the compiler adds no guard on the row count
        if not torch.compiler.is_compiling() and flat.size(0) == 1 and flat.device.type == "cpu" and bf16_gemv_runs():
            y = bf16_gemv(flat.float().bfloat16().float(), weight)  # a decoding step's row: lmforge's C kernel
        elif flat.device.type == "cpu" and not bf16_supported():  # no native bf16 here: the same weights, in fp32
            y = F.linear(flat.float(), weight.float())
        elif packed and flat.device.type == "cpu" and flat.size(0) and not torch.compiler.is_compiling():
            y = torch.ops.mkldnn._linear_pointwise(flat.bfloat16(), self._packed_weight(), None, "none", [], "").float()
        else:
            y = F.linear(flat.to(torch.bfloat16), weight).float()
        if self.bias is not None:
            y += self.bias[rows]
        return y.reshape(*x.shape[:-1], weight.size(0)).to(x.dtype)

    def _packed_weight(self) -> torch.Tensor:
        key = weight_state(self.weight)
        if self._packed is None or self._packed[0] != key:
            self._packed = key, torch.ops.mkldnn._reorder_linear_weight(self.weight, 1)
        return self._packed[1]

    def __getstate__(self) -> dict:
        """The state without the packed copy: oneDNN's opaque tensors can be neither copied nor saved."""
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, bf16"


class Bf16Embedding(nn.Module):
    """An embedding table held in bf16; a lookup returns fp32 rows."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.bfloat16))

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, table: nn.Embedding) -> Bf16Embedding:
        layer = cls(table.num_embeddings, table.embedding_dim)
        layer.weight = table.weight.detach().to(torch.bfloat16)
        return layer.to(table.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()
