"""Which model to train for a budget (lmforge recommend): a size and a token budget from the compute a budget of
hours buys, a config to start from, and for fine-tuning which pretrained family to start from and why.

The size follows a rule of thumb, not a law: compute-optimal training spends about 20 tokens per parameter (Hoffmann
et al., 2022, "Chinchilla"), and training costs about 6 FLOPs per parameter and token, so a budget of C FLOPs buys
N = sqrt(C / 120) parameters trained on D = 20 N tokens. Small models and small budgets stray from it; data you
do not have caps D whatever the rule says."""

from __future__ import annotations

import dataclasses
import math

from lmforge.config import RunConfig, load_config
from lmforge.errors import LmforgeError
from lmforge.estimate import planned_config
from lmforge.hardware import Hardware
from lmforge.models import on_meta

TOKENS_PER_PARAMETER = 20
# what to pretrain for each pretraining task, the shipped config whose sections a recommendation starts from
PRETRAIN = {"lm": "gpt-small", "mlm": "bert-small", "translation": "transformer-mt", "span-corruption": "t5-small"}
# fine-tuning tasks: the family to start from and why
FINETUNE = {
    "classification": ("bert", "an encoder reads the whole text in both directions, which labelling needs; "
                                "all-MiniLM-L6-v2 (installed with lmforge's tests) is a small, fast start"),
    "ner": ("bert", "token labels need every word to see its right context too: an encoder"),
    "relation": ("bert", "an encoder with entity markers (lmforge's relation task) reads both entities in context"),
    "qa": ("bert", "extractive answers are spans of the context, which an encoder points at"),
    "seq2seq": ("t5", "text out needs a decoder, and a source to read an encoder: an encoder-decoder (T5)"),
    "summarization": ("t5", "an encoder-decoder (T5) reads the document once and writes the summary"),
    "generation": ("gpt", "free text continuing a prompt is what a decoder-only model (GPT) is trained for"),
}  # fmt: skip


def budget_flops(hours: float, hardware: Hardware, precision: str, devices: int, utilization: float | None) -> float:
    """The training FLOPs a budget of hours buys at the hardware's peak times the utilization."""
    if not hours > 0 or not math.isfinite(hours):
        raise LmforgeError(f"--budget {hours} is out of range: give the hours of training, e.g. 2 or 0.5")
    if devices < 1:
        raise LmforgeError(f"--devices {devices} is out of range: at least 1")
    u = hardware.utilization if utilization is None else utilization
    if not 0 < u <= 1:
        raise LmforgeError(f"--utilization {u} is out of range: a share of peak in (0, 1]")
    return hours * 3600 * hardware.peak_flops(precision) * u * devices


def compute_optimal(flops: float) -> tuple[float, float]:
    """(parameters, tokens) by the rule of thumb: 6 N D = C with D = 20 N."""
    n = math.sqrt(flops / (6 * TOKENS_PER_PARAMETER))
    return n, TOKENS_PER_PARAMETER * n


def _parameters(cfg: RunConfig) -> int:
    return on_meta(cfg.family, cfg.model).num_parameters()


def _resized(base: RunConfig, d_model: int) -> RunConfig:
    """base at width d_model: heads of 64, d_ff 4 d_model, as many layers as heads (GPT-2 small's 12 x 768
    proportion), at least 2 and at most 48."""
    heads = d_model // 64
    sizes = {"n_layer": min(max(heads, 2), 48), "d_model": d_model, "n_head": heads, "d_ff": 4 * d_model}
    if base.family == "t5":
        sizes |= {"n_decoder_layer": sizes["n_layer"], "d_kv": 64}
    if base.family == "bert":
        sizes["embedding_size"] = d_model
    return dataclasses.replace(base, model=dataclasses.replace(base.model, **sizes))


def sized_config(name: str, parameters: float) -> tuple[RunConfig, int]:
    """The shipped config `name` resized (_resized) to the width whose parameter count is nearest `parameters`
    (a binary search over widths of 128 to 4096, counts growing with width); returns it and its exact count."""
    base = planned_config(load_config(name))  # the vocabulary the run's tokenizer will have
    widths = list(range(128, 4097, 64))
    low, high = 0, len(widths) - 1
    while low < high:  # the first width whose count reaches `parameters`
        mid = (low + high) // 2
        if _parameters(_resized(base, widths[mid])) < parameters:
            low = mid + 1
        else:
            high = mid
    near = [_resized(base, widths[k]) for k in {max(low - 1, 0), low}]
    counted = [(abs(math.log(_parameters(c) / parameters)), _parameters(c), c) for c in near]
    _, count, cfg = min(counted, key=lambda x: x[0])
    return cfg, count


def recommend(task: str, hours: float, hardware: Hardware, precision: str = "fp32", devices: int = 1,
              utilization: float | None = None) -> dict:  # fmt: skip
    """A recommendation for pretraining (lm, mlm, translation, span-corruption) or fine-tuning (a task name)."""
    flops = budget_flops(hours, hardware, precision, devices, utilization)
    if task in FINETUNE:
        family, why = FINETUNE[task]
        return {"task": task, "kind": "fine-tune", "budget_hours": hours, "budget_flops": flops, "family": family,
                "why": why, "hardware": hardware.name}  # fmt: skip
    if task not in PRETRAIN:
        known = ", ".join([*PRETRAIN, *FINETUNE])
        raise LmforgeError(f"unknown task {task!r}: choose one of {known}")
    parameters, tokens = compute_optimal(flops)
    cfg, count = sized_config(PRETRAIN[task], parameters)
    per_step = cfg.train.batch_tokens or cfg.train.batch_size * cfg.train.seq_len
    steps = max(1, round(TOKENS_PER_PARAMETER * count / per_step))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
    return {
        "task": task, "kind": "pretrain", "budget_hours": hours, "budget_flops": flops, "hardware": hardware.name,
        "rule": f"about {TOKENS_PER_PARAMETER} tokens per parameter (Chinchilla's compute-optimal rule of thumb)",
        "parameters": count, "tokens": TOKENS_PER_PARAMETER * count, "optimal_parameters": parameters,
        "optimal_tokens": tokens, "config": cfg.to_dict(), "base_config": PRETRAIN[task], "max_steps": steps,
    }  # fmt: skip


def format_recommendation(r: dict) -> str:
    """The recommendation as a few aligned lines."""
    rows = [
        ("task", r["task"]),
        ("budget", f"{r['budget_hours']:g} h on {r['hardware']}: {r['budget_flops']:.3g} FLOPs"),
    ]
    if r["kind"] == "fine-tune":
        rows += [("start from", f"a pretrained {r['family']} checkpoint"), ("why", r["why"])]
    else:
        m = r["config"]["model"]
        shape = f"{m['n_layer']} layers x {m['d_model']} wide, {m['n_head']} heads"
        rows += [
            ("rule of thumb", r["rule"]),
            ("model", f"{r['parameters'] / 1e6:.1f} M parameters ({shape})"),
            ("tokens", f"{r['tokens'] / 1e6:.1f} M ({r['max_steps']} steps of the config's batch)"),
            ("config", f"{r['base_config']}, resized (written with --out)"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
