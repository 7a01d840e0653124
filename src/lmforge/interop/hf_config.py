"""Hugging Face model directories: config.json translated to our configs and back, the weight files read, and the
heads and task class a directory's tensors hold.

Heads are read from the weights: a bare BertModel becomes an encoder without MLM head (its pooler, which lmforge
does not use without a sentence head, is dropped). The tensor names themselves are the tables in hf.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lmforge.config import BertConfig, GPTConfig, TaskConfig
from lmforge.errors import LmforgeError
from lmforge.interop.hf import FAMILIES, SUPPORTED, Family, TaskHead

# HF activation names -> ours (GPT-2's gelu_new is the tanh approximation, our gelu), and back
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
HF_ACTIVATIONS = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu"}


def read_config(path: Path) -> tuple[Family, dict]:
    """The family and raw config.json of an HF model directory; an unknown architecture names the supported ones."""
    if not (path / "config.json").is_file():
        raise LmforgeError(f"{path} has no config.json: give a Hugging Face model directory")
    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{path / 'config.json'} is not a readable JSON config ({e})") from None
    if not isinstance(raw, dict):
        raise LmforgeError(f"{path / 'config.json'} must hold a JSON object")
    architecture = (raw.get("architectures") or [None])[0]
    family = FAMILIES.get(raw.get("model_type"))
    if family is None or (architecture is not None and architecture not in SUPPORTED):
        found = architecture or raw.get("model_type")
        raise LmforgeError(f"{path}: architecture {found!r} is not supported; lmforge imports {', '.join(SUPPORTED)}")
    if raw.get("tie_word_embeddings") is False:
        raise LmforgeError(f"{path}: untied output embeddings are not supported (tie_word_embeddings is false)")
    return family, raw


def read_weights(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """model.safetensors (or its shards); a pickled pytorch_model.bin only when allowed, then with weights_only."""
    single, index, pickled = (
        path / "model.safetensors",
        path / "model.safetensors.index.json",
        path / "pytorch_model.bin",
    )
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(path / shard).items()}
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise LmforgeError(f"{path}: the safetensors weights are damaged or incomplete ({e})") from None
    if pickled.is_file():
        if not allow_pickle:
            raise LmforgeError(
                f"{pickled} is a pickle, which can run code when loaded; lmforge reads safetensors. Convert it "
                "to model.safetensors, or pass --allow-pickle if you trust its source (it is then read with "
                "weights_only=True)"
            )
        try:
            return torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling raises many types; weights_only refuses anything but tensors
            raise LmforgeError(f"{pickled} could not be read as plain tensors ({type(e).__name__}: {e})") from None
    raise LmforgeError(f"{path} has no model.safetensors (nor pytorch_model.bin): not a Hugging Face model directory")


def heads_of(family: Family, keys: set[str]) -> tuple[bool, bool, bool]:
    """(head model, has an MLM head, has a sentence head), read from the tensor names."""
    head_model = any(k.startswith(f"{family.prefix}.") for k in keys)
    mlm = family.model_type != "gpt2" and any(k.startswith(family.heads["mlm_head"] + ".") for k in keys)
    sentence = "sentence_head" in family.heads and any(k.startswith(family.heads["sentence_head"] + ".") for k in keys)
    return head_model, mlm, sentence


def task_of(family: Family, architecture: str | None, keys: set[str]) -> str | None:
    """The fine-tuning task of a head model: the one its HF class names, else the one whose head modules its tensors
    hold (the most specific: a classifier's pooler tells a BERT sequence classifier from a token classifier)."""
    if architecture is not None:
        return next((task for task, head in family.tasks.items() if head.architecture == architecture), None)
    modules = {k.rsplit(".", 1)[0] for k in keys}
    held = [task for task, head in family.tasks.items() if set(head.names.values()) <= modules]
    return max(held, key=lambda task: len(set(family.tasks[task].names.values())), default=None)


def task_head(family: Family, task: TaskConfig) -> TaskHead:
    """The HF class of a fine-tuned model; an error for one that no transformers class computes."""
    head = family.tasks.get(task.task)
    if head is None:
        raise LmforgeError(
            f"a {family.model_type} {task.task} model has no Hugging Face class (transformers has "
            f"{', '.join(h.architecture for h in family.tasks.values())}): use the lmforge checkpoint itself"
        )
    if task.task == "classification" and (task.pooling or family.pooling) != family.pooling:
        raise LmforgeError(
            f"{head.architecture} pools {family.pooling!r} and this classifier pools {task.pooling!r}: "
            "transformers cannot compute it; use the lmforge checkpoint itself"
        )
    return head


def model_config(family: Family, raw: dict, mlm: bool, sentence: bool) -> GPTConfig | BertConfig:
    """Our config from config.json; values we cannot represent are refused by name."""
    get = raw.get
    act_key = "activation_function" if family.model_type == "gpt2" else "hidden_act"
    activation = ACTIVATIONS.get(get(act_key, "gelu_new" if family.model_type in ("gpt2", "albert") else "gelu"))
    if activation is None:
        raise LmforgeError(f"{act_key} {raw[act_key]!r} is not supported; lmforge runs {', '.join(ACTIVATIONS)}")
    if family.model_type == "gpt2":
        if get("scale_attn_by_inverse_layer_idx") or get("reorder_and_upcast_attn"):
            raise LmforgeError("GPT-2 with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn is not supported")
        return GPTConfig(
            vocab_size=get("vocab_size", 50257), n_layer=get("n_layer", 12), n_head=get("n_head", 12),
            d_model=get("n_embd", 768), d_ff=get("n_inner"), max_seq_len=get("n_positions", 1024),
            dropout=get("resid_pdrop", 0.1), activation=activation, layer_norm_eps=get("layer_norm_epsilon", 1e-5),
        )  # fmt: skip
    if get("position_embedding_type", "absolute") != "absolute":
        raise LmforgeError(f"position_embedding_type {raw['position_embedding_type']!r} is not supported: absolute")
    n_layer, groups = get("num_hidden_layers", 12), get("num_hidden_groups", 1)
    if family.model_type == "albert" and (get("inner_group_num", 1) != 1 or groups not in (1, n_layer)):
        raise LmforgeError(
            "ALBERT with inner_group_num != 1 or 1 < num_hidden_groups < num_hidden_layers is not supported"
        )
    offset = get("pad_token_id", 1) + 1 if family.model_type == "roberta" else 0
    return BertConfig(
        vocab_size=get("vocab_size", 30522), n_layer=n_layer, n_head=get("num_attention_heads", 12),
        d_model=get("hidden_size", 768), d_ff=get("intermediate_size", 3072), embedding_size=get("embedding_size"),
        max_seq_len=get("max_position_embeddings", 512) - offset, type_vocab_size=get("type_vocab_size", 2),
        dropout=get("hidden_dropout_prob", 0.1), activation=activation, layer_norm_eps=get("layer_norm_eps", 1e-12),
        share_layers=family.model_type == "albert" and groups == 1 and n_layer > 1,
        sentence_objective=("sop" if family.model_type == "albert" else "nsp") if sentence else "none",
        mlm_head=mlm, position_offset=offset,
    )  # fmt: skip


def family_of(cfg: GPTConfig | BertConfig) -> Family:
    """The HF family that holds our config: GPT-2 for a GPT; for an encoder ALBERT when it factorizes or shares,
    RoBERTa when positions start after the padding index, else BERT."""
    if isinstance(cfg, GPTConfig):
        if (cfg.position, cfg.norm, cfg.bias, cfg.tie_embeddings) != ("learned", "pre", True, True):
            raise LmforgeError(
                "GPT-2 has learned positions, pre-norm, biases and tied embeddings; this model differs "
                f"(position {cfg.position}, norm {cfg.norm}, bias {cfg.bias}, tie_embeddings {cfg.tie_embeddings})"
            )
        return FAMILIES["gpt2"]
    if cfg.share_layers or cfg.embedding_size != cfg.d_model:
        return FAMILIES["albert"]
    return FAMILIES["roberta" if cfg.position_offset else "bert"]


def architecture_of(family: Family, cfg: GPTConfig | BertConfig) -> str:
    if isinstance(cfg, GPTConfig):
        return family.architectures[1]
    sentence = cfg.sentence_objective != "none"
    name = family.architectures[2 if sentence else int(cfg.mlm_head)]
    if not name or (sentence and not cfg.mlm_head):
        raise LmforgeError(
            f"{family.model_type} has no Hugging Face class for an encoder with mlm_head {cfg.mlm_head} and "
            f"sentence_objective {cfg.sentence_objective}"
        )
    return name


def hf_config(
    family: Family, cfg: GPTConfig | BertConfig, special: dict[str, int | None], task: TaskConfig | None = None
) -> dict:
    """config.json for our config, or with a task for the task's HF class; special holds the tokenizer's ids by
    role (pad, cls, sep, eos). GPT-2's sequence classifier finds the last real token as the last non-pad one, so
    a task model's pad is eos, which ends no text."""
    architecture = task_head(family, task).architecture if task else architecture_of(family, cfg)
    common = {"architectures": [architecture], "model_type": family.model_type}
    if task is not None:
        common |= {"id2label": dict(enumerate(task.labels)), "label2id": {n: i for i, n in enumerate(task.labels)},
                   "num_labels": len(task.labels)}  # fmt: skip
    if isinstance(cfg, GPTConfig):
        return {
            **common, "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model,
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
            "activation_function": HF_ACTIVATIONS[cfg.activation], "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
            "bos_token_id": special["eos"], "eos_token_id": special["eos"], "tie_word_embeddings": True,
        } | ({"pad_token_id": special["eos"]} if task else {})  # fmt: skip
    pad = cfg.position_offset - 1 if family.model_type == "roberta" else special["pad"]
    out = {
        **common, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "intermediate_size": cfg.d_ff, "hidden_act": HF_ACTIVATIONS[cfg.activation],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_seq_len + cfg.position_offset, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps, "position_embedding_type": "absolute", "tie_word_embeddings": True,
        "pad_token_id": pad if pad is not None else 0, "bos_token_id": special["cls"], "eos_token_id": special["sep"],
    }  # fmt: skip
    if family.model_type == "albert":
        groups = 1 if cfg.share_layers else cfg.n_layer
        out |= {"embedding_size": cfg.embedding_size, "num_hidden_groups": groups, "inner_group_num": 1,
                "classifier_dropout_prob": cfg.dropout}  # fmt: skip
    return out
