"""A pre-norm Transformer block's training step on CPU as one autograd Function: its forward and a written-out
backward.

Autograd records a causal LM's block as ten nodes (two layer norms, four products, attention, the activation, two
residual sums), each module called through nn.Module's machinery and each product through kernels.linear's checks. On
char-small's steps (768 rows of 128 columns) that bookkeeping costs more than the layer norms' arithmetic. `Block`
runs the same operations in one Function, its products on kernels.linear's kernels and its attention on
kernels.attention's, and saves the same tensors for the backward. On torch's GELU and layer norm its outputs and
gradients are bit for bit the modules' on oneDNN's products (a test); where lmforge's C kernels run
(kernels.native), GELU's forward leaves its derivative in place of its input, so the backward is one product, and
the second layer norm takes the residual sum in the same pass, as the norms' gradients take the residual gradient:
the same values within fp32 rounding. On a 2-core Zen 4, char-small's forward and backward, alternating: 44.3 ->
42.3 ms (the Function), 46.1 -> 43.2 (GELU), 42.6 -> 41.3 (layer norms).

It runs where the block records a gradient with everything the attention kernel needs (kernels.attention); a
post-norm, gated or cross-attending block, RMS norms, dropout in training, hooks on its modules, a cache or attention
weights asked for, and torch.compile take TransformerBlock's path."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from lmforge.kernels.attention import Attention
from lmforge.kernels.linear import Linear, linear, linear_backward
from lmforge.kernels.native import (
    add_layer_norm,
    causal_attention,
    causal_attention_backward,
    gelu_and_slope,
    gelu_runs,
    layer_norm_backward,
    layer_norm_runs,
)
from lmforge.nn.blocks import TransformerBlock
from lmforge.nn.cache import KVCache
from lmforge.nn.feedforward import ACTIVATIONS as FFN_ACTIVATIONS
from lmforge.nn.feedforward import FeedForward
from lmforge.nn.positions import RotaryEmbedding

aten = torch.ops.aten

# the gradient of each of lmforge.nn's activations (nn.feedforward.ACTIVATIONS) from (grad, its input u, its output
# a), as autograd's formulas take them; relu's reads only its output, so its input is not kept
GRADIENTS = {
    "gelu_exact": lambda grad, u, a: aten.gelu_backward(grad, u),
    "gelu": lambda grad, u, a: aten.gelu_backward(grad, u, approximate="tanh"),
    "relu": lambda grad, u, a: aten.threshold_backward(grad, a, 0),
}
NATIVE_GELU = {"gelu_exact": (), "gelu": ("tanh",)}  # kernels.native.gelu_and_slope's arguments for each GELU
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")  # fmt: skip


class _Block(torch.autograd.Function):
    """x + attention(LN1(x)) = h, then h + FFN(LN2(h)); the parameters in the order of `Block._parameters_in_order`."""

    @staticmethod
    def forward(ctx, x, cos2, sin2, meta, l1w, l1b, wqkv, bqkv, wo, bo, l2w, l2b, w1, b1, w2, b2):
        heads, scale, eps1, eps2, activation, native_gelu, native = meta
        b, t, d = x.shape
        x2 = x.reshape(b * t, d).contiguous()  # a view of wider rows would be read as if it were not
        _, n1, mean1, rstd1 = _norm(x2, None, l1w, l1b, eps1, native)
        qkv = linear(n1, wqkv, bqkv).view(b, t, -1)
        y, lse = causal_attention(qkv, cos2, sin2, heads, scale)
        h, n2, mean2, rstd2 = _norm(linear(y.view(b * t, -1), wo, bo), x2, l2w, l2b, eps2, native)
        u = linear(n2, w1, b1)
        if native_gelu:  # u becomes GELU'(u), all the gradient needs
            a = gelu_and_slope(u, *NATIVE_GELU[activation])
        else:
            a, u = FFN_ACTIVATIONS[activation](u), None if activation == "relu" else u
        out = linear(a, w2, b2).add_(h)
        ctx.save_for_backward(x2, n1, mean1, rstd1, qkv, y, lse, h, n2, mean2, rstd2, u, a,
                              cos2, sin2, l1w, l1b, wqkv, wo, l2w, l2b, w1, w2)  # fmt: skip
        ctx.meta = meta
        return out.view(b, t, d)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x2, n1, mean1, rstd1, qkv, y, lse, h, n2, mean2, rstd2, u, a, cos2, sin2, *weights = ctx.saved_tensors
        l1w, l1b, wqkv, wo, l2w, l2b, w1, w2 = weights
        heads, scale, _, _, activation, native_gelu, native = ctx.meta
        needs = ctx.needs_input_grad
        shape = grad_out.shape
        grad_out = grad_out.reshape(x2.shape).contiguous()  # an expanded gradient (of a sum) has zero strides
        grad_a, grad_w2, grad_b2 = linear_backward(grad_out, a, w2, (True, needs[14], needs[15]))
        grad_u = grad_a.mul_(u) if native_gelu else GRADIENTS[activation](grad_a, u, a)
        grad_n2, grad_w1, grad_b1 = linear_backward(grad_u, n2, w1, (True, needs[12], needs[13]))
        grad_h, grad_l2w, grad_l2b = _norm_backward(
            grad_n2, h, mean2, rstd2, l2w, l2b, grad_out, (True, needs[10], needs[11]), native
        )
        grad_y, grad_wo, grad_bo = linear_backward(grad_h, y.view(x2.size(0), -1), wo, (True, needs[8], needs[9]))
        grad_qkv = causal_attention_backward(qkv, cos2, sin2, y, grad_y.view(y.shape), lse, heads, scale)
        first = needs[0] or needs[4] or needs[5]  # anything below the first layer norm
        grad_n1, grad_wqkv, grad_bqkv = linear_backward(
            grad_qkv.view(x2.size(0), -1), n1, wqkv, (first, needs[6], needs[7])
        )
        grad_x = grad_l1w = grad_l1b = None
        if first:
            grad_x, grad_l1w, grad_l1b = _norm_backward(
                grad_n1, x2, mean1, rstd1, l1w, l1b, grad_h, (needs[0], needs[4], needs[5]), native, out=grad_h
            )
        if needs[0]:
            grad_x = grad_x.view(shape)
        return (grad_x, None, None, None, grad_l1w, grad_l1b, grad_wqkv, grad_bqkv, grad_wo, grad_bo, grad_l2w,
                grad_l2b, grad_w1, grad_b1, grad_w2, grad_b2)  # fmt: skip


def _norm(a, residual, weight, bias, eps: float, native: bool) -> tuple:
    """(h, n, mean, rstd): h = a + residual (a's memory; a itself without one) and n its layer norm, on lmforge's
    kernel (native) or torch's."""
    if native:
        return add_layer_norm(a, residual, weight, bias, eps)
    h = a if residual is None else a.add_(residual)
    return h, *torch.native_layer_norm(h, h.shape[-1:], weight, bias, eps)


def _norm_backward(grad_n, h, mean, rstd, weight, bias, residual, needs: tuple, native: bool, out=None) -> tuple:
    """(the gradient of h plus residual, in out where given, the weight's, the bias's), those needs (h's, the
    weight's, the bias's) asks for; on lmforge's kernel (native) or torch's."""
    if native:
        grad_h, grad_w, grad_b = layer_norm_backward(grad_n, h, mean, rstd, weight, residual, needs[2], out)
        return grad_h if needs[0] else None, grad_w if needs[1] else None, grad_b
    mask = [needs[0], needs[1], needs[2] and bias is not None]
    grad_h, grad_w, grad_b = aten.native_layer_norm_backward(grad_n, h, h.shape[-1:], mean, rstd, weight, bias, mask)
    return (None if grad_h is None else grad_h.add_(residual)), grad_w, grad_b


class Block(TransformerBlock):
    """TransformerBlock (same modules, parameters and state-dict keys) whose training forward and backward run as one
    Function where it applies; what lmforge.kernels.apply_kernels turns a model's TransformerBlock layers into."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, cache: KVCache | None = None, layer: int = 0,
                rope: RotaryEmbedding | None = None, need_weights: bool = False,
                position_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """TransformerBlock.forward's arguments and result."""
        plain = context is None and cache is None and not need_weights and position_bias is None
        params = self._fused(x, mask, rope) if plain else None
        if params is None:
            return super().forward(x, mask, context, context_mask, cache, layer, rope, need_weights, position_bias)
        cos2, sin2, scale = self.attn.kernel_arguments(x.size(1), rope)
        activation = self.ffn.activation
        native_gelu = activation in NATIVE_GELU and gelu_runs()
        native = x.size(-1) % 8 == 0 and layer_norm_runs()
        meta = (self.attn.n_head, scale, self.ln_attn.eps, self.ln_ffn.eps, activation, native_gelu, native)
        return _Block.apply(x, cos2, sin2, meta, *params), None

    def _parameters_in_order(self) -> tuple:
        attn, ffn = self.attn, self.ffn
        return (self.ln_attn.weight, self.ln_attn.bias, attn.qkv.weight, attn.qkv.bias, attn.out.weight,
                attn.out.bias, self.ln_ffn.weight, self.ln_ffn.bias, ffn.up.weight, ffn.up.bias, ffn.down.weight,
                ffn.down.bias)  # fmt: skip

    def _fused(self, x: torch.Tensor, mask: torch.Tensor | None, rope: RotaryEmbedding | None) -> tuple | None:
        """The Function's parameters where it runs, else None."""
        if torch.compiler.is_compiling() or not torch.is_grad_enabled() or not self._fits(x, mask, rope):
            return None
        params = self._parameters_in_order()
        return params if x.requires_grad or any(p is not None and p.requires_grad for p in params) else None

    def _fits(self, x: torch.Tensor, mask: torch.Tensor | None, rope: RotaryEmbedding | None) -> bool:
        ffn, norms = self.ffn, (self.ln_attn, self.ln_ffn)
        modules = (self.attn, self.attn.qkv, self.attn.out, ffn, ffn.up, ffn.down, *norms, self.drop)
        return (
            self.pre_norm
            and self.cross is None
            and type(ffn) is FeedForward
            and ffn.gate is None
            and ffn.activation in GRADIENTS
            and ffn.act is FFN_ACTIVATIONS[ffn.activation]
            and (self.drop.p == 0 or not self.training)
            and type(self.attn) is Attention
            and all(type(layer) in (nn.Linear, Linear) for layer in modules[1:3] + modules[4:6])
            and all(type(norm) is nn.LayerNorm and norm.normalized_shape == x.shape[-1:] for norm in norms)
            and all(norm.weight is not None for norm in norms)
            and all(p.dtype == torch.float32 for p in (self.ln_attn.weight, self.ln_ffn.weight, ffn.up.weight))
            and not _hooked(modules)
            and self.attn._fused(x, mask, rope)
        )


def _hooked(modules: tuple[nn.Module, ...]) -> bool:
    """Whether calling the block's modules would run a hook, theirs or a global one, that the Function would skip
    (the block's own hooks run around it as they would)."""
    if any(getattr(torch_module, name, None) for name in _GLOBAL_HOOKS):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in modules)
