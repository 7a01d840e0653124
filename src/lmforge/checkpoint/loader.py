"""The one loader: whatever a path holds (an lmforge run or checkpoint, pretrained or fine-tuned, a Hugging Face
model directory, or the name of an installed model package), every verb gets the same `Loaded` from `load`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch import nn

from lmforge.checkpoint.files import CONFIG, WEIGHTS, Checkpoint, Loaded, load_checkpoint, load_weights
from lmforge.checkpoint.hub import PACKAGED, load_hf, resolve
from lmforge.config import RunConfig, TaskConfig
from lmforge.errors import LmforgeError
from lmforge.kernels import apply_kernels
from lmforge.kernels.bf16 import bf16_supported
from lmforge.kernels.calibration import BUILT_IN, built_in_texts, text_maxima
from lmforge.kernels.compiled import compile_layers
from lmforge.kernels.int8 import Int8Linear, u8_product_works
from lmforge.kernels.quantize import Quantization, check_dtype, quantize_model
from lmforge.models import GPT, MODELS, Bert
from lmforge.tasks import get_task
from lmforge.tokenizer import Tokenizer


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    family: str | None = None,
    dtype: str | None = None,
    compile: bool = False,
) -> Loaded:
    """The model (eval mode, on device, with lmforge.kernels applied), tokenizer, run config and task (None unless
    fine-tuned) that path holds.

    family ("gpt" or "bert"), when given, is the one the caller can use; another is a user mistake. dtype (fp32,
    bf16, int8; None: as stored) quantizes an fp32 model's linear layers on the fly (lmforge.kernels.quantize);
    compile runs its layers under torch.compile (lmforge.kernels.compile_layers), faster once compiled."""
    source = resolve(path)
    if not source.is_dir():
        kind = "is a file, not a directory" if source.exists() else "not found"
        raise LmforgeError(
            f"model {source} {kind}: give an lmforge checkpoint, a Hugging Face model directory (config.json, "
            f"model.safetensors, tokenizer files) or one of {', '.join(PACKAGED)}"
        )
    loaded = load_hf(source, allow_pickle) if (source / "config.json").is_file() else from_checkpoint(source)
    if family is not None and loaded.config.family != family:
        raise LmforgeError(f"{loaded.path or source} holds a {loaded.config.family} model; this needs a {family} one")
    loaded.model = loaded.model.to(device).eval()  # quantized, and calibrated, where it will run
    if dtype is not None and dtype != loaded.dtype:
        if loaded.dtype != "fp32":
            raise LmforgeError(
                f"{loaded.path or source} holds {loaded.dtype} weights: --dtype {dtype} needs the fp32 model it was "
                "quantized from"
            )
        check_dtype(dtype)
        q, input_max = Quantization(dtype), None
        if dtype == "int8":  # smoothed as lmforge quantize smooths by default, measured with the same kernels
            apply_kernels(loaded.model)
            q.calibration, input_max = BUILT_IN, text_maxima(loaded.model, loaded.tokenizer, built_in_texts())
        quantize_model(loaded.model, q, input_max=input_max)
        loaded.dtype = dtype
    loaded.model = apply_kernels(loaded.model)  # the CPU's faster kernels for inference
    if compile:
        compile_layers(loaded.model)
    return loaded


def from_checkpoint(path: str | Path) -> Loaded:
    """An lmforge checkpoint directory (or a run's OUT, for its newest checkpoint) as a Loaded."""
    ckpt = load_checkpoint(path)
    backbone = MODELS[ckpt.cfg.family](ckpt.cfg.model)
    task = task_of(ckpt)
    model = get_task(task.task).build_head(backbone, task) if task is not None else backbone
    quantization = quantization_of(ckpt)
    if quantization is not None:
        quantize_model(model, quantization, empty=True)
    load_weights(model, ckpt.weights, str(ckpt.path / WEIGHTS))
    if quantization is not None and quantization.dtype == "int8":
        note_seven_bits(model, ckpt.path)
    dtype = quantization.dtype if quantization else "fp32"
    return Loaded(model.eval(), ckpt.tokenizer, ckpt.cfg, task, ckpt.path, dtype=dtype)


def quantization_of(ckpt: Checkpoint) -> Quantization | None:
    """How a quantized checkpoint's layers were quantized, checked; None for an fp32 one. A bf16 checkpoint on a
    CPU without native bf16 arithmetic runs its products in fp32 (from the same bf16 weights), said once here."""
    if "quantization" not in ckpt.extra:
        return None
    try:
        quantization = Quantization(**ckpt.extra["quantization"])
    except (LmforgeError, TypeError) as e:
        raise LmforgeError(f"{ckpt.path / CONFIG}: section quantization is damaged ({e})") from None
    if quantization.dtype == "bf16" and not bf16_supported():
        print(
            f"note: this CPU has no native bf16 arithmetic; {ckpt.path} runs its bf16 weights in fp32", file=sys.stderr
        )
    return quantization


def note_seven_bits(model: nn.Module, path: Path) -> None:
    """Says once, on stderr, when an int8 checkpoint's weights were rounded before their adjacent pairs were bounded
    and this CPU (no VNNI) therefore rounds their activations to 7 bits."""
    if any(isinstance(m, Int8Linear) and m.u8_steps != 255 for m in model.modules()) and u8_product_works():
        print(f"note: {path} was quantized before int8 weights kept their pairs bounded: on this CPU (no VNNI) its "
              "activations keep 7 bits; quantize its fp32 model again for 8", file=sys.stderr)  # fmt: skip


def task_of(ckpt: Checkpoint) -> TaskConfig | None:
    """The fine-tuned task a checkpoint's config names, checked; None for a pretrained checkpoint."""
    if "task" not in ckpt.extra:
        return None
    try:
        return TaskConfig(**ckpt.extra["task"])
    except (LmforgeError, TypeError) as e:
        raise LmforgeError(f"{ckpt.path / CONFIG}: section task is damaged ({e})") from None


def language_model(loaded: Loaded) -> Loaded:
    """A model fine-tuned as a language model still (a chat model) as the GPT it is, for the verbs that generate
    from a GPT; any other model as it is."""
    if loaded.task is not None and get_task(loaded.task.task).language_model:
        return dataclasses.replace(loaded, model=loaded.model.backbone, task=None)
    return loaded


def trainable(loaded: Loaded, use: str) -> Loaded:
    """Refuses a quantized model where weights must train (`use` names what would train them)."""
    if loaded.dtype != "fp32":
        raise LmforgeError(
            f"{loaded.path} holds {loaded.dtype} weights for inference: {use} needs the fp32 model it was "
            "quantized from"
        )
    return loaded


def pretrained(loaded: Loaded, use: str) -> Loaded:
    """Refuses a fine-tuned model where a pretrained one is needed (`use` names the verb that needs it); a fine-tuned
    language model (chat) is one."""
    loaded = language_model(loaded)
    if loaded.task is not None:
        raise LmforgeError(
            f"{loaded.path} is a fine-tuned {loaded.task.task} model: use lmforge predict (it cannot {use})"
        )
    return loaded


def from_pretrained(
    path: str | Path,
    device: str | torch.device = "cpu",
    family: str | None = None,
    allow_pickle: bool = False,
    dtype: str | None = None,
    compile: bool = False,
) -> tuple[GPT | Bert, Tokenizer]:
    """`load` for a pretrained model: an inference-ready (eval) model and its tokenizer from an lmforge checkpoint or
    a local HF model directory; "all-MiniLM-L6-v2" names the installed package's copy."""
    loaded = pretrained(load(path, device, allow_pickle, family, dtype, compile), "serve as a pretrained model")
    return loaded.model, loaded.tokenizer


def load_model(
    path: str | Path, device: str | torch.device = "cpu", family: str | None = None
) -> tuple[GPT | Bert, Tokenizer, RunConfig]:
    """`load` for a pretrained model, with its run config (the README's `load_model`)."""
    loaded = pretrained(load(path, device, family=family), "serve as a pretrained model")
    return loaded.model, loaded.tokenizer, loaded.config


def load_finetuned(
    path: str | Path, device: str | torch.device = "cpu", dtype: str | None = None, compile: bool = False
) -> tuple[nn.Module, Tokenizer, TaskConfig]:
    """`load` for a fine-tuned model: the task's model (a head with its `backbone`), its tokenizer and its TaskConfig
    (task, labels, pooling, max_seq_len, input columns)."""
    loaded = require_task(load(path, device, dtype=dtype, compile=compile))
    return loaded.model, loaded.tokenizer, loaded.task


def require_task(loaded: Loaded) -> Loaded:
    """A fine-tuned model as it is; a pretrained one is a user mistake, named with the way out."""
    if loaded.task is None:
        raise LmforgeError(
            f"{loaded.path} is not fine-tuned (no task in its config): fine-tune it with lmforge finetune"
        )
    return loaded
