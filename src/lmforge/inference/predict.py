"""Batched prediction with a fine-tuned model: each task's output records (labels with probabilities, tags per word,
answers), from texts on the command line or a file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.atomic import check_output_file, write_text_atomic
from lmforge.checkpoint.loader import load_finetuned
from lmforge.config import TaskConfig
from lmforge.data.labelled import Columns, collate
from lmforge.data.records import check_data_file
from lmforge.errors import LmforgeError
from lmforge.tasks import Task, get_task
from lmforge.tokenizer import Tokenizer


def check_batch_size(batch_size: int) -> None:
    """Checked before a model loads: 0 would fail deep in the batching, a negative size would predict nothing."""
    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1, not {batch_size}")


def encode(examples: list, tokenizer: Tokenizer, model, task: TaskConfig, labelled: bool) -> list[dict]:
    """Features for the model, as its task encodes them."""
    return get_task(task.task).encode(examples, tokenizer, model.backbone.family, task, labelled)


@torch.no_grad()
def predict_features(
    model: torch.nn.Module,
    features: list[dict],
    pad_id: int,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    task: Task | None = None,
    tokenizer: Tokenizer | None = None,
) -> list:
    """Probabilities per feature, as the task gathers them ((n_labels,) for a sequence, per word for NER), or the
    generated text of a generating task (which needs the tokenizer). Batches group similar lengths, so little
    compute goes to padding; the results come back in input order."""
    check_batch_size(batch_size)
    if task is not None and task.generates:
        return task.generate(model, tokenizer, features, batch_size, device)
    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[torch.Tensor | None] = [None] * len(features)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([features[i] for i in chunk], pad_id)
        logits = model(*(batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")))
        probs = logits.float().softmax(-1).cpu()
        for row, i in enumerate(chunk):
            out[i] = probs[row] if task is None else task.gather(probs[row], features[i])
    model.train(was_training)
    return out


def pad_id_of(tokenizer: Tokenizer) -> int:
    return tokenizer.pad_id if tokenizer.pad_id is not None else 0  # a GPT has none; the mask hides padding anyway


def predict(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    task: TaskConfig,
    examples: list,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """One output record per example, in order."""
    kind = get_task(task.task)
    features = encode(examples, tokenizer, model, task, labelled=False)
    probs = predict_features(model, features, pad_id_of(tokenizer), batch_size, device, kind, tokenizer)
    return kind.records(task, examples, features, probs)


def predict_texts(
    checkpoint: str | Path,
    texts: list[str],
    pair: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str | None = None,
    compile: bool = False,
) -> list[dict]:
    """Predictions for texts given on the command line; NER splits each text into words at whitespace, relation
    reads its entities from inline markers, QA takes each text as a question about `pair`, the context."""
    check_batch_size(batch_size)
    model, tokenizer, task = load_finetuned(checkpoint, device, dtype, compile)
    examples = [get_task(task.task).example(t, pair, n) for n, t in enumerate(texts, start=1)]
    return predict(model, tokenizer, task, examples, batch_size, device)


def predict_file(
    checkpoint: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str | None = None,
    compile: bool = False,
) -> int:
    """Writes one JSON line per input example to output_path (all or nothing); returns the number written. The paths
    and the batch size are checked before the model loads."""
    input_path = Path(input_path)
    check_data_file(input_path)
    output_path = check_output_file(output_path, {"--input": input_path})
    check_batch_size(batch_size)
    model, tokenizer, task = load_finetuned(checkpoint, device, dtype, compile)
    examples = get_task(task.task).read(input_path, columns_of(task), labelled=False)
    records = predict(model, tokenizer, task, examples, batch_size, device)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)


def columns_of(task: TaskConfig) -> Columns:
    """The fields a checkpoint's fine-tuning data read its inputs from."""
    return Columns(task.text_column, task.text_pair_column, task.label_column, task.head_column, task.tail_column)
