"""Hugging Face T5 (T5ForConditionalGeneration, T5Model; v1.0 and v1.1): config.json and tensor names, both ways.

T5 has two stacks whose layers differ (the decoder's holds cross-attention), so its table is its own rather than
a hf.py Family. Our fused `qkv` is HF's q, k and v stacked; the relative position bias HF keeps in each stack's
first layer is ours per stack.
"""

from __future__ import annotations

import torch

from lmforge.config import T5Config
from lmforge.errors import LmforgeError

ARCHITECTURES = ("T5Model", "T5ForConditionalGeneration")
SELF_ATTENTION = {"attn.qkv": ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v"),
                  "attn.out": "layer.0.SelfAttention.o", "ln_attn": "layer.0.layer_norm"}  # fmt: skip
CROSS_ATTENTION = {"cross.qkv": ("layer.1.EncDecAttention.q", "layer.1.EncDecAttention.k", "layer.1.EncDecAttention.v"),
                   "cross.out": "layer.1.EncDecAttention.o", "ln_cross": "layer.1.layer_norm"}  # fmt: skip


def feed_forward(layer: int, gated: bool) -> dict[str, str]:
    """The FFN sublayer, HF's layer.{layer}: gated, wi_0 is the gate and wi_1 the linear half."""
    dense = f"layer.{layer}.DenseReluDense"
    up = {"ffn.gate": f"{dense}.wi_0", "ffn.up": f"{dense}.wi_1"} if gated else {"ffn.up": f"{dense}.wi"}
    return {**up, "ffn.down": f"{dense}.wo", "ln_ffn": f"layer.{layer}.layer_norm"}


def module_names(cfg: T5Config) -> dict[str, str | tuple[str, ...]]:
    """Our module -> its HF module (or the three stacked into our qkv)."""
    gated = cfg.feed_forward == "gated-gelu"
    names: dict[str, str | tuple[str, ...]] = {
        "tok_emb": "shared", "encoder.ln_final": "encoder.final_layer_norm",
        "decoder.ln_final": "decoder.final_layer_norm", "lm_head": "lm_head",
        "encoder_bias.embed": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
        "decoder_bias.embed": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias",
    }  # fmt: skip
    encoder_layer = {**SELF_ATTENTION, **feed_forward(1, gated)}
    decoder_layer = {**SELF_ATTENTION, **CROSS_ATTENTION, **feed_forward(2, gated)}
    stacks = (("encoder", cfg.n_layer, encoder_layer), ("decoder", cfg.n_decoder_layer, decoder_layer))
    for stack, n, layer in stacks:
        for i in range(n):
            for ours, hf in layer.items():
                prefix = f"{stack}.block.{i}."
                names[f"{stack}.blocks.{i}.{ours}"] = (
                    tuple(prefix + h for h in hf) if isinstance(hf, tuple) else prefix + hf
                )
    return names


def t5_config(raw: dict) -> T5Config:
    """Our config from a T5 config.json; a feed-forward T5 we do not run is refused by name. Whether the decoder
    output is rescaled (our tied embeddings) is transformers 5's scale_decoder_outputs, else tie_word_embeddings."""
    get = raw.get
    feed_forward = get("feed_forward_proj", "relu")
    if feed_forward not in ("relu", "gated-gelu"):
        raise LmforgeError(f"feed_forward_proj {feed_forward!r} is not supported; lmforge runs relu and gated-gelu")
    n_layer = get("num_layers", 6)
    return T5Config(
        vocab_size=get("vocab_size", 32128), max_seq_len=get("n_positions", 512), d_model=get("d_model", 512),
        d_kv=get("d_kv", 64), d_ff=get("d_ff", 2048), n_layer=n_layer,
        n_decoder_layer=get("num_decoder_layers") or n_layer,
        n_head=get("num_heads", 8), relative_attention_num_buckets=get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=get("relative_attention_max_distance", 128),
        dropout=get("dropout_rate", 0.1), layer_norm_eps=get("layer_norm_epsilon", 1e-6), feed_forward=feed_forward,
        tie_embeddings=get("scale_decoder_outputs", get("tie_word_embeddings", True) is not False),
        decoder_start_id=get("decoder_start_token_id", get("pad_token_id", 0)), pad_id=get("pad_token_id", 0),
        eos_id=get("eos_token_id", 1),
    )  # fmt: skip


def hf_t5_config(cfg: T5Config) -> dict:
    """config.json of T5ForConditionalGeneration for our config; the original Transformer's settings have none."""
    t5 = {"position": "relative", "norm": "pre", "norm_type": "rms", "bias": False}
    other = [f"{k} {getattr(cfg, k)}" for k, v in t5.items() if getattr(cfg, k) != v]
    if other:
        raise LmforgeError(
            f"Hugging Face's T5 has no model.{', model.'.join(other)}: only T5-style encoder-decoders (relative "
            "positions, RMS pre-norms, no biases) export; keep this one as an lmforge checkpoint"
        )
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff, "num_layers": cfg.n_layer,
        "num_decoder_layers": cfg.n_decoder_layer, "num_heads": cfg.n_head,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance, "dropout_rate": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps, "feed_forward_proj": cfg.feed_forward,
        "tie_word_embeddings": cfg.tie_embeddings, "decoder_start_token_id": cfg.decoder_start_id,
        "pad_token_id": cfg.pad_id, "eos_token_id": cfg.eos_id, "is_encoder_decoder": True,
        "n_positions": cfg.max_seq_len,
    }  # fmt: skip


def t5_tensors(cfg: T5Config, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF's tensors that carry something of their own: each stack's embed_tokens is `shared`; a T5Model has no
    lm_head, which is then the shared embedding (as is any lm_head of a tied model)."""
    hf = {k: v for k, v in hf.items() if not k.endswith("embed_tokens.weight")}
    if cfg.tie_embeddings:
        hf.pop("lm_head.weight", None)
    elif "lm_head.weight" not in hf and "shared.weight" in hf:
        hf["lm_head.weight"] = hf["shared.weight"]
    return hf


def t5_to_ours(cfg: T5Config, hf: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]):
    """HF's state dict -> ours, for the tensors named in `expected` (our model's state dict)."""
    names = module_names(cfg)
    hf = t5_tensors(cfg, hf)
    if "lm_head.weight" not in hf:  # tied: our lm_head is the embedding
        hf["lm_head.weight"] = hf["shared.weight"]
    out = {}
    for key in expected:
        module, param = key.rsplit(".", 1)
        name = names[module]
        if isinstance(name, tuple):
            out[key] = torch.cat([hf[f"{h}.{param}"] for h in name])
        else:
            out[key] = hf[f"{name}.{param}"]
    return out


def t5_to_hf(cfg: T5Config, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict (tied tensors once) -> T5ForConditionalGeneration's; a tied LM head is transformers' to tie."""
    names = module_names(cfg)
    out = {}
    for key, tensor in weights.items():
        module, param = key.rsplit(".", 1)
        hf = names[module]
        if isinstance(hf, tuple):
            out.update({f"{h}.{param}": t.clone() for h, t in zip(hf, tensor.chunk(3), strict=True)})
        else:
            out[f"{hf}.{param}"] = tensor
    return out
