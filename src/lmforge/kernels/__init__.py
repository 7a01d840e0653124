"""Kernels applied to a model from outside, so that lmforge.nn stays plain PyTorch: CPU kernel choice for linear
layers, the int8 greedy-argmax screen of an LM head, causal self-attention in one C kernel, a pre-norm block's
training step as one autograd Function, and compiled layers (`compile_layers`)."""

from torch import nn

from lmforge.kernels.attention import Attention
from lmforge.kernels.block import Block
from lmforge.kernels.compiled import compile_layers, tag_compile_caches
from lmforge.kernels.linear import Linear
from lmforge.nn.attention import MultiHeadAttention
from lmforge.nn.blocks import TransformerBlock


def apply_kernels(model: nn.Module) -> nn.Module:
    """Turns each nn.Linear of model, in place, into kernels.linear.Linear, each MultiHeadAttention into
    kernels.attention.Attention and each TransformerBlock into kernels.block.Block, and returns model.

    Only the class changes, so parameters, hooks and state-dict keys stay; outputs and gradients change by fp32
    rounding at most (training runs oneDNN's products too where they are the faster, and the attention kernel; the
    training loop applies this). Subclasses keep their own forward, and a second call finds nothing left to turn. Adds
    lmforge's tag to torch.compile's cache key (kernels.compiled.tag_compile_caches), since a compiled model then
    holds lmforge's operators."""
    tag_compile_caches()
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear
        elif type(module) is MultiHeadAttention:
            module.__class__ = Attention
        elif type(module) is TransformerBlock:
            module.__class__ = Block
    return model


__all__ = ["apply_kernels", "compile_layers"]
