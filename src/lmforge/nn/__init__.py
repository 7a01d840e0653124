"""The Transformer's building blocks, one concept per module."""

from lmforge.nn.attention import MultiHeadAttention, attention_mask, scaled_dot_product_attention
from lmforge.nn.blocks import Decoder, Encoder, TransformerBlock, TransformerStack
from lmforge.nn.cache import KVCache
from lmforge.nn.feedforward import FeedForward
from lmforge.nn.norms import RMSNorm, make_norm
from lmforge.nn.positions import (
    LearnedPositions,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalPositions,
    relative_position_bucket,
    sinusoidal_table,
)

__all__ = [
    "Decoder",
    "Encoder",
    "FeedForward",
    "KVCache",
    "LearnedPositions",
    "MultiHeadAttention",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "SinusoidalPositions",
    "TransformerBlock",
    "TransformerStack",
    "attention_mask",
    "make_norm",
    "relative_position_bucket",
    "scaled_dot_product_attention",
    "sinusoidal_table",
]
