"""Hugging Face XLNet (XLNetLMHeadModel, XLNetModel): config.json and tensor names, both ways, from one table.

transformers keeps each attention projection as one (d_model, n_head, d_head) tensor; ours are nn.Linear weights,
(n_head * d_head, d_model) for q, k, v and r and (d_model, n_head * d_head) for the output. XLNetLMHeadModel's names
start with "transformer."; a bare XLNetModel's do not, and it has no LM-head bias (ours then starts at zero).
"""

from __future__ import annotations

import torch

from lmforge.config.models import XLNetConfig
from lmforge.errors import LmforgeError

ARCHITECTURES = ("XLNetLMHeadModel", "XLNetModel")
PREFIX = "transformer."
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}  # HF -> ours
LAYER = {
    "rel_attn.q": ("attn.q.weight", "in"), "rel_attn.k": ("attn.k.weight", "in"),
    "rel_attn.v": ("attn.v.weight", "in"), "rel_attn.r": ("attn.r.weight", "in"),
    "rel_attn.o": ("attn.out.weight", "out"), "rel_attn.seg_embed": ("attn.seg_embed", "same"),
    "rel_attn.layer_norm.weight": ("ln_attn.weight", "same"), "rel_attn.layer_norm.bias": ("ln_attn.bias", "same"),
    "ff.layer_1.weight": ("ffn.up.weight", "same"), "ff.layer_1.bias": ("ffn.up.bias", "same"),
    "ff.layer_2.weight": ("ffn.down.weight", "same"), "ff.layer_2.bias": ("ffn.down.bias", "same"),
    "ff.layer_norm.weight": ("ln_ffn.weight", "same"), "ff.layer_norm.bias": ("ln_ffn.bias", "same"),
}  # fmt: skip
BIASES = ("r_w_bias", "r_r_bias", "r_s_bias")


def tensor_names(cfg: XLNetConfig) -> dict[str, tuple[str, str]]:
    """HF tensor (XLNetLMHeadModel's name) -> (our tensor, how it is laid out: same, copy, in, out or mask). Attention
    biases shared across layers (untie_r false) are layer 0's, copied to every HF layer."""
    names = {
        f"{PREFIX}word_embedding.weight": ("tok_emb.weight", "same"),
        f"{PREFIX}mask_emb": ("mask_emb", "mask"),
        "lm_loss.bias": ("lm_head.bias", "same"),
    }
    for i in range(cfg.n_layer):
        for hf, (ours, kind) in LAYER.items():
            names[f"{PREFIX}layer.{i}.{hf}"] = (f"blocks.{i}.{ours}", kind)
        for bias in BIASES:
            ours = f"blocks.{i}.attn.{bias}" if cfg.untie_r else f"blocks.0.attn.{bias}"
            names[f"{PREFIX}layer.{i}.rel_attn.{bias}"] = (ours, "same" if cfg.untie_r else "copy")
    return names


def _to_hf(tensor: torch.Tensor, kind: str, cfg: XLNetConfig) -> torch.Tensor:
    heads = (cfg.n_head, cfg.d_model // cfg.n_head)
    if kind == "in":  # (n_head * d_head, d_model) -> (d_model, n_head, d_head)
        return tensor.t().reshape(cfg.d_model, *heads).contiguous()
    if kind == "out":
        return tensor.reshape(cfg.d_model, *heads).contiguous()
    if kind == "mask":
        return tensor.reshape(1, 1, cfg.d_model).contiguous()
    if kind == "copy":  # safetensors refuses one tensor under several names
        return tensor.clone()
    return tensor


def _to_ours(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "in":
        return tensor.flatten(1).t().contiguous()
    if kind == "out":
        return tensor.flatten(1).contiguous()
    if kind == "mask":
        return tensor.flatten()
    return tensor


def xlnet_config(raw: dict) -> XLNetConfig:
    """Our config from an XLNet config.json; an activation we do not run is refused by name. transformers keeps the
    attention biases per layer whatever untie_r says, so the import keeps them per layer too."""
    get = raw.get
    activation = get("ff_activation", "gelu")
    if activation not in ACTIVATIONS:
        raise LmforgeError(f"ff_activation {activation!r} is not supported; lmforge runs {', '.join(ACTIVATIONS)}")
    attn_type = get("attn_type", "bi")
    if attn_type not in ("bi", "uni"):
        raise LmforgeError(f"attn_type {attn_type!r} is not supported; XLNet's are bi and uni")
    clamp_len = get("clamp_len", -1)
    return XLNetConfig(
        vocab_size=get("vocab_size", 32000), n_layer=get("n_layer", 24), n_head=get("n_head", 16),
        d_model=get("d_model", 1024), d_ff=get("d_inner", 4096), dropout=get("dropout", 0.1),
        layer_norm_eps=get("layer_norm_eps", 1e-12), activation=ACTIVATIONS[activation],
        mem_len=get("mem_len") or None, reuse_len=get("reuse_len") or None, bi_data=get("bi_data", False),
        clamp_len=clamp_len if clamp_len > 0 else -1, same_length=get("same_length", False) and attn_type == "uni",
        attn_type=attn_type, untie_r=True,
    )  # fmt: skip


def hf_xlnet_config(cfg: XLNetConfig) -> dict:
    """config.json of XLNetLMHeadModel for our config (the permutation objective's settings are ours alone)."""
    activation = {ours: hf for hf, ours in reversed(ACTIVATIONS.items())}[cfg.activation]
    return {
        "architectures": ["XLNetLMHeadModel"], "model_type": "xlnet", "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "d_head": cfg.d_model // cfg.n_head,
        "d_inner": cfg.d_ff, "ff_activation": activation, "untie_r": cfg.untie_r, "attn_type": cfg.attn_type,
        "layer_norm_eps": cfg.layer_norm_eps, "dropout": cfg.dropout, "mem_len": cfg.mem_len,
        "reuse_len": cfg.reuse_len, "bi_data": cfg.bi_data, "clamp_len": cfg.clamp_len,
        "same_length": cfg.same_length, "tie_word_embeddings": True,
    }  # fmt: skip


def xlnet_to_hf(cfg: XLNetConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict (tied tensors once) -> XLNetLMHeadModel's; the LM-head weight is the word embedding, which
    transformers ties."""
    return {hf: _to_hf(state_dict[ours], kind, cfg) for hf, (ours, kind) in tensor_names(cfg).items()}


def xlnet_to_ours(
    cfg: XLNetConfig, hf_tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """XLNetLMHeadModel's or XLNetModel's tensors -> ours, for the names in `expected` (our model's state dict)."""
    hf = {k.removeprefix(PREFIX): v for k, v in hf_tensors.items()}
    source = {}
    for name, (ours, kind) in tensor_names(cfg).items():
        source.setdefault(ours, (name.removeprefix(PREFIX), kind))
    source["lm_head.weight"] = ("word_embedding.weight", "same")  # tied
    out = {}
    for key in expected:
        name, kind = source[key]
        if name == "lm_loss.bias" and name not in hf:
            out[key] = torch.zeros_like(expected[key])
        else:
            out[key] = _to_ours(hf[name], kind)
    return out
