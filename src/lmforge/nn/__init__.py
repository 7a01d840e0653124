"""The Transformer's building blocks, one concept per module."""

from lmforge.nn.attention import MultiHeadAttention, attention_mask, scaled_dot_product_attention
from lmforge.nn.blocks import Decoder, Encoder, TransformerBlock, TransformerStack
from lmforge.nn.cache import KVCache
from lmforge.nn.feedforward import FeedForward
from lmforge.nn.positions import LearnedPositions, RotaryEmbedding, SinusoidalPositions, sinusoidal_table

__all__ = [
    "Decoder",
    "Encoder",
    "FeedForward",
    "KVCache",
    "LearnedPositions",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "SinusoidalPositions",
    "TransformerBlock",
    "TransformerStack",
    "attention_mask",
    "scaled_dot_product_attention",
    "sinusoidal_table",
]
