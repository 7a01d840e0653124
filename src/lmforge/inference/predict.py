"""Batched prediction with a fine-tuned model: labels with probabilities, NER tags mapped back to words."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.checkpoint.files import load_finetuned, write_text_atomic
from lmforge.config import TaskConfig
from lmforge.data.labelled import ENCODERS, Columns, Example, collate, read_examples
from lmforge.data.qa import QAExample
from lmforge.data.relation import RelationExample, unmark
from lmforge.errors import LmforgeError
from lmforge.tasks.squad import qa_records
from lmforge.tokenizer import Tokenizer


def family_of(model: torch.nn.Module) -> str:
    return "bert" if hasattr(model.backbone, "embeddings") else "gpt"


def encode(examples: list[Example], tokenizer: Tokenizer, model, task: TaskConfig, labelled: bool) -> list[dict]:
    """Features for the model: token ids, segment ids, label indices (when labelled), word positions (NER), and
    windows with their example and character offsets (QA)."""
    options = {"doc_stride": task.doc_stride} if task.task == "qa" else {}
    return ENCODERS[task.task](
        examples, tokenizer, family_of(model), task.max_seq_len, task.labels if labelled else None, **options
    )


@torch.no_grad()
def predict_features(
    model: torch.nn.Module, features: list[dict], pad_id: int, batch_size: int = 64, device: str = "cpu"
) -> list[torch.Tensor]:
    """Probabilities per example: (n_labels,) for a sequence, (n_words, n_labels) for a sentence's words (a word
    cut off by max_seq_len gets all its mass on label 0, which is O in a tag set). Batches group similar lengths,
    so little compute goes to padding; the results come back in input order."""
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
            if "words" not in features[i]:
                out[i] = probs[row]
                continue
            words = torch.tensor(features[i]["words"], dtype=torch.long)
            word_probs = probs[row][words.clamp(min=0)]
            word_probs[words < 0] = torch.nn.functional.one_hot(torch.tensor(0), probs.size(-1)).float()
            out[i] = word_probs
    model.train(was_training)
    return out


def pad_id_of(tokenizer: Tokenizer) -> int:
    return tokenizer.pad_id if tokenizer.pad_id is not None else 0  # a GPT has none; the mask hides padding anyway


def to_record(example: Example, probs: torch.Tensor, task: TaskConfig) -> dict:
    """One prediction as JSON: the label and each label's probability, or each word's tag and its probability."""
    if task.task == "ner":
        best = probs.argmax(-1).tolist()
        return {
            "words": example.text,
            "tags": [task.labels[i] for i in best],
            "probabilities": [round(float(p[i]), 6) for p, i in zip(probs, best, strict=True)],
        }
    if task.task == "relation":
        record = {"text": example.text, "head": list(example.head), "tail": list(example.tail)}
    else:
        record = {"text": example.text} | ({"text_pair": example.pair} if example.pair is not None else {})
    return record | {
        "label": task.labels[int(probs.argmax())],
        "probabilities": {label: round(float(p), 6) for label, p in zip(task.labels, probs, strict=True)},
    }


def predict(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    task: TaskConfig,
    examples: list[Example],
    batch_size: int = 64,
    device: str = "cpu",
) -> list[dict]:
    features = encode(examples, tokenizer, model, task, labelled=False)
    probs = predict_features(model, features, pad_id_of(tokenizer), batch_size, device)
    if task.task == "qa":
        return qa_records(examples, features, probs, task.max_answer_len)
    return [to_record(ex, p, task) for ex, p in zip(examples, probs, strict=True)]


def predict_texts(
    checkpoint: str | Path, texts: list[str], pair: str | None = None, batch_size: int = 64, device: str = "cpu"
) -> list[dict]:
    """Predictions for texts given on the command line; NER splits each text into words at whitespace, relation
    reads its entities from inline markers, QA takes each text as a question about `pair`, the context."""
    model, tokenizer, task = load_finetuned(checkpoint, device)
    examples = [example_from_text(task.task, t, pair, n) for n, t in enumerate(texts, start=1)]
    return predict(model, tokenizer, task, examples, batch_size, device)


def predict_file(
    checkpoint: str | Path, input_path: str | Path, output_path: str | Path, batch_size: int = 64, device: str = "cpu"
) -> int:
    """Writes one JSON line per input example to output_path (all or nothing); returns the number written."""
    model, tokenizer, task = load_finetuned(checkpoint, device)
    examples = read_examples(input_path, task.task, columns_of(task), labelled=False)
    records = predict(model, tokenizer, task, examples, batch_size, device)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)


def columns_of(task: TaskConfig) -> Columns:
    """The fields a checkpoint's fine-tuning data read its inputs from."""
    return Columns(task.text_column, task.text_pair_column, task.label_column, task.head_column, task.tail_column)


def example_from_text(task: str, text: str, pair: str | None, n: int) -> Example | RelationExample | QAExample:
    if task == "relation":
        return unmark(text, f"--text {n}")
    if task == "qa":
        if pair is None:
            raise LmforgeError("a QA model answers --text QUESTION about --context CONTEXT: give the context")
        return QAExample(f"--text {n}", str(n), text, pair, [])
    return Example(0, text.split() if task == "ner" else text, pair)
