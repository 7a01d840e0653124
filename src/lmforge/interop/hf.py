"""Hugging Face tensor names: for each family and task class, the table from our module names to theirs, and the
renaming of a state dict both ways.

A family is data: the HF model_type, the prefix its head models (GPT2LMHeadModel, BertForMaskedLM, ...) put before
the base model's names, and the HF name of each of our modules. One table serves import and export, so a round trip
is exact. Our fused attention projection `qkv` is HF's query, key and value stacked; GPT-2's Conv1D weights are
stored transposed. A fine-tuned model is a task head around a backbone: each family also names the transformers
class of each task (BertForSequenceClassification, ...) and where that class keeps the head's modules; the
backbone's pretraining heads, which no task uses, are left out of an export. config.json and the weight files are
hf_config.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from lmforge.errors import LmforgeError

BERT_LAYER = {
    "attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn.out": "attention.output.dense", "ln_attn": "attention.output.LayerNorm", "ffn.up": "intermediate.dense",
    "ffn.down": "output.dense", "ln_ffn": "output.LayerNorm",
}  # fmt: skip
ALBERT_LAYER = {
    "attn.qkv": ("attention.query", "attention.key", "attention.value"), "attn.out": "attention.dense",
    "ln_attn": "attention.LayerNorm", "ffn.up": "ffn", "ffn.down": "ffn_output", "ln_ffn": "full_layer_layer_norm",
}  # fmt: skip
GPT2_LAYER = {
    "ln_attn": "ln_1", "attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "ln_ffn": "ln_2", "ffn.up": "mlp.c_fc",
    "ffn.down": "mlp.c_proj",
}  # fmt: skip
EMBEDDINGS = {
    "embeddings.word": "embeddings.word_embeddings", "embeddings.position": "embeddings.position_embeddings",
    "embeddings.token_type": "embeddings.token_type_embeddings", "embeddings.ln": "embeddings.LayerNorm",
}  # fmt: skip
# HF tensors that carry nothing of their own: buffers, and output decoders tied to the word embedding
IGNORED = re.compile(r"(position_ids|\.attn\.bias|\.attn\.masked_bias|decoder\.weight|decoder\.bias|^lm_head\.weight)$")


@dataclass(frozen=True)
class TaskHead:
    """A fine-tuned task as transformers holds it: its class and where our head's modules live in it."""

    architecture: str
    names: dict[str, str]  # our task model's modules (the head's, and backbone.pooler when it pools) -> HF's
    no_bias: frozenset[str] = frozenset()  # modules whose bias HF's class lacks (GPT-2's score): it must be zero


@dataclass(frozen=True)
class Family:
    model_type: str
    prefix: str  # before the base model's names in a head model
    stack: str  # our stack of blocks
    layer: str  # HF name of layer {i}
    block: dict[str, str | tuple[str, ...]]  # ours -> HF inside one layer
    base: dict[str, str]  # ours -> HF in the base model, outside the layers
    heads: dict[str, str] = field(default_factory=dict)  # ours -> HF at the top of a head model
    transposed: frozenset[str] = frozenset()  # block modules whose weight HF stores (in, out)
    architectures: tuple[str, str, str] = ("", "", "")  # HF class of: base model, MLM head, MLM + sentence heads
    tasks: dict[str, TaskHead] = field(default_factory=dict)  # our task name -> its HF class
    pooling: str = "cls"  # what its sequence classifier reads: [CLS], or GPT-2's last real token


def encoder_tasks(name: str, classifier: dict[str, str]) -> dict[str, TaskHead]:
    """An encoder's task classes; its sequence classifier pools [CLS] through a pooler (RoBERTa's sits in its
    classification head), which is the backbone's own when a pretrained backbone kept one."""
    return {
        "classification": TaskHead(f"{name}ForSequenceClassification",
                                   {**classifier, "backbone.pooler": classifier["pooler"]}),
        "ner": TaskHead(f"{name}ForTokenClassification", {"classifier": "classifier"}),
        "qa": TaskHead(f"{name}ForQuestionAnswering", {"qa_outputs": "qa_outputs"}),
    }  # fmt: skip


FAMILIES = {
    "gpt2": Family(
        "gpt2", "transformer", "decoder", "h.{i}", GPT2_LAYER,
        {"tok_emb": "wte", "pos_emb": "wpe", "decoder.ln_final": "ln_f"},
        transposed=frozenset({"attn.qkv", "attn.out", "ffn.up", "ffn.down"}),
        architectures=("GPT2Model", "GPT2LMHeadModel", ""),
        tasks={"classification": TaskHead("GPT2ForSequenceClassification", {"classifier": "score"},
                                          no_bias=frozenset({"classifier"})),
               "ner": TaskHead("GPT2ForTokenClassification", {"classifier": "classifier"})},
        pooling="last",
    ),
    "bert": Family(
        "bert", "bert", "encoder", "encoder.layer.{i}", BERT_LAYER, {**EMBEDDINGS, "pooler": "pooler.dense"},
        {"mlm_head": "cls.predictions", "mlm_head.dense": "cls.predictions.transform.dense",
         "mlm_head.ln": "cls.predictions.transform.LayerNorm", "sentence_head": "cls.seq_relationship"},
        architectures=("BertModel", "BertForMaskedLM", "BertForPreTraining"),
        tasks=encoder_tasks("Bert", {"pooler": "bert.pooler.dense", "classifier": "classifier"}),
    ),
    "roberta": Family(
        "roberta", "roberta", "encoder", "encoder.layer.{i}", BERT_LAYER, {**EMBEDDINGS, "pooler": "pooler.dense"},
        {"mlm_head": "lm_head", "mlm_head.dense": "lm_head.dense", "mlm_head.ln": "lm_head.layer_norm"},
        architectures=("RobertaModel", "RobertaForMaskedLM", ""),
        tasks=encoder_tasks("Roberta", {"pooler": "classifier.dense", "classifier": "classifier.out_proj"}),
    ),
    "albert": Family(
        "albert", "albert", "encoder", "encoder.albert_layer_groups.{i}.albert_layers.0", ALBERT_LAYER,
        {**EMBEDDINGS, "embeddings.project": "encoder.embedding_hidden_mapping_in", "pooler": "pooler"},
        {"mlm_head": "predictions", "mlm_head.dense": "predictions.dense", "mlm_head.ln": "predictions.LayerNorm",
         "sentence_head": "sop_classifier.classifier"},
        architectures=("AlbertModel", "AlbertForMaskedLM", "AlbertForPreTraining"),
        tasks=encoder_tasks("Albert", {"pooler": "albert.pooler", "classifier": "classifier"}),
    ),
}  # fmt: skip
SUPPORTED = tuple(
    name for f in FAMILIES.values() for name in (*f.architectures, *(h.architecture for h in f.tasks.values())) if name
)


def module_names(family: Family, n_blocks: int, head_model: bool) -> dict[str, str | tuple[str, ...]]:
    """Our module -> its HF module (or the three stacked into our qkv), with the base prefix of a head model."""
    base = f"{family.prefix}." if head_model else ""
    names = {ours: base + hf for ours, hf in family.base.items()}
    for i in range(n_blocks):
        layer = base + family.layer.format(i=i) + "."
        for ours, hf in family.block.items():
            key = f"{family.stack}.blocks.{i}.{ours}"
            names[key] = tuple(layer + h for h in hf) if isinstance(hf, tuple) else layer + hf
    return {**names, **family.heads}


def task_names(family: Family, task: str, n_blocks: int) -> dict[str, str | tuple[str, ...] | None]:
    """Our task model's module -> its place in the task's HF class; None for the backbone's pretraining heads and
    pooler, which the class does not hold (a classifier's pooler is named by the task)."""
    backbone = {f"backbone.{ours}": hf for ours, hf in module_names(family, n_blocks, head_model=True).items()}
    unused = {f"backbone.{ours}": None for ours in (*family.heads, "pooler")}
    return {**backbone, **unused, **family.tasks[task].names}


def to_hf(
    family: Family, weights: dict[str, torch.Tensor], head_model: bool, task: str | None = None
) -> dict[str, torch.Tensor]:
    """Our state dict (tied tensors once) -> HF's; with a task, our task model's -> its HF class's."""
    names = _names(family, weights, head_model, task)
    no_bias = family.tasks[task].no_bias if task else frozenset()
    out = {}
    for key, tensor in weights.items():
        module, param = key.rsplit(".", 1)
        hf = names[module]
        if hf is None:
            continue
        if module in no_bias and param == "bias":
            if tensor.any():
                raise LmforgeError(
                    f"{family.tasks[task].architecture}'s {hf} has no bias and this model's {module} bias is not zero: "
                    "transformers cannot hold it; use the lmforge checkpoint itself"
                )
            continue
        if isinstance(hf, tuple):
            out.update({f"{h}.{param}": t.clone() for h, t in zip(hf, tensor.chunk(3), strict=True)})
            continue
        out[f"{hf}.{param}"] = tensor.t().contiguous() if _transposed(family, module, param) else tensor
    return out


def to_ours(
    family: Family,
    hf: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    head_model: bool,
    task: str | None = None,
) -> dict[str, torch.Tensor]:
    """HF's state dict -> ours, for the tensors named in `expected` (our model's state dict); a bias HF's class
    lacks is zero."""
    names = _names(family, expected, head_model, task)
    no_bias = family.tasks[task].no_bias if task else frozenset()
    out = {}
    for key in expected:
        module, param = key.rsplit(".", 1)
        name = names[module]
        if module in no_bias and param == "bias":
            out[key] = torch.zeros_like(expected[key])
            continue
        if isinstance(name, tuple):
            out[key] = torch.cat([hf[f"{h}.{param}"] for h in name])
            continue
        tensor = hf[f"{name}.{param}"]
        out[key] = tensor.t().contiguous() if _transposed(family, module, param) else tensor
    return out


def _names(family: Family, weights: dict, head_model: bool, task: str | None) -> dict:
    n_blocks = _n_blocks(family, weights)
    return task_names(family, task, n_blocks) if task else module_names(family, n_blocks, head_model)


def _transposed(family: Family, module: str, param: str) -> bool:
    """GPT-2's Conv1D keeps its weight as (in, out); module is ours, e.g. decoder.blocks.3.attn.qkv."""
    module = module.removeprefix("backbone.")
    return param == "weight" and module.split(".", 3)[-1] in family.transposed


def _n_blocks(family: Family, weights: dict) -> int:
    prefix = f"{family.stack}.blocks."
    keys = (k.removeprefix("backbone.") for k in weights)
    return 1 + max((int(k[len(prefix) :].split(".", 1)[0]) for k in keys if k.startswith(prefix)), default=-1)
