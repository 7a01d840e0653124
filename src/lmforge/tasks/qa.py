"""Extractive question answering: SQuAD v1.1 JSON or flat JSON lines (the Hugging Face datasets layout), and
question + context pairs cut into overlapping windows, each labelled with its answer's first and last token.

A context longer than a window is read in several: [CLS] question [SEP] context[a:b] [SEP], the next window
starting doc_stride tokens before the end of the last (doc_stride is the overlap, as in transformers' run_qa.py).
Each context token keeps its character offsets, so a predicted token span maps back to characters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, nonempty
from lmforge.data.records import iter_jsonl, read_utf8
from lmforge.errors import LmforgeError
from lmforge.models.heads import SpanExtractor
from lmforge.tasks.base import Task
from lmforge.tasks.squad import qa_metrics, qa_records
from lmforge.tokenizer import Tokenizer

SPAN_LABELS = ["start", "end"]  # the head's two outputs, saved as the task's labels
MAX_QUESTION = 64  # question tokens kept (transformers' max_query_length), at most half a window


@dataclass
class QAExample:
    """A question about a context and its gold answers as (text, character start); `where` names it in errors."""

    where: str
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]

    @property
    def label(self) -> list:
        """No class label to check against the model's: the answers are spans of the context."""
        return []


def _answers(value: object, where: str) -> list[tuple[str, int]]:
    """[{"text", "answer_start"}, ...] (SQuAD) or {"text": [...], "answer_start": [...]} (datasets)."""
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        starts = value.get("answer_start")
        if not isinstance(starts, list) or len(starts) != len(value["text"]):
            raise LmforgeError(f"{where}: answers needs as many answer_start as text entries")
        value = [{"text": t, "answer_start": s} for t, s in zip(value["text"], starts, strict=True)]
    ok = isinstance(value, list) and all(
        isinstance(a, dict) and isinstance(a.get("text"), str) and type(a.get("answer_start")) is int for a in value
    )
    if not ok:
        raise LmforgeError(f'{where}: answers must be [{{"text": ..., "answer_start": N}}, ...]')
    return [(a["text"], a["answer_start"]) for a in value]


def _example(where: str, qid: str, question: object, context: object, answers: object, labelled: bool) -> QAExample:
    if not isinstance(question, str) or not isinstance(context, str):
        raise LmforgeError(f"{where}: the question and the context must be strings")
    gold = _answers(answers, where) if labelled else []  # predict ignores any answers given
    if labelled and not gold:
        raise LmforgeError(f"{where}: no answer; give at least one (unanswerable questions are not supported)")
    for text, start in gold:
        if start < 0 or not text or context[start : start + len(text)] != text:
            found = context[max(start, 0) : max(start, 0) + len(text)]
            raise LmforgeError(
                f"{where}: answer {text!r} is not at answer_start {start} of its context (there: {found!r}); "
                "fix answer_start (0-based, in characters) or the answer text"
            )
    return QAExample(where, qid, question, context, gold)


def read_qa(path: Path, columns: Columns, labelled: bool) -> list[QAExample]:
    """QA examples of a SQuAD .json file or a .jsonl file of {id, question, context, answers}."""
    question_key, context_key = columns.text or "question", columns.text_pair or "context"
    answers_key = columns.label or "answers"
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        examples = []

        def fail(line: int, why: str) -> None:
            raise LmforgeError(f"{path}, line {line}: {why}")

        for line, r in iter_jsonl(path, fail):
            if not isinstance(r, dict):
                fail(line, "not a JSON object")
            if question_key not in r or context_key not in r or (labelled and answers_key not in r):
                fail(line, f'needs "{question_key}", "{context_key}" and "{answers_key}" (see --text-column)')
            where = f"{path}, line {line}"
            examples.append(
                _example(where, str(r.get("id", line)), r[question_key], r[context_key], r.get(answers_key), labelled)
            )
        return examples
    if suffix != ".json":
        raise LmforgeError(f"{path}: QA data is SQuAD .json or .jsonl (question, context, answers)")
    try:
        squad = json.loads(read_utf8(path))
        paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
        return [
            _example(
                f"{path}, question {qa['id']!r}",
                str(qa["id"]),
                qa["question"],
                p["context"],
                qa.get("answers"),
                labelled,
            )  # fmt: skip
            for p in paragraphs
            for qa in p["qas"]
        ]
    except (ValueError, KeyError, TypeError) as e:
        why = f"lacks {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise LmforgeError(
            f"{path} is not SQuAD JSON ({why}): data > paragraphs > context, qas > id, question"
        ) from None


def token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The first and last token overlapping characters [start, end)."""
    first = next(i for i, (_, e) in enumerate(offsets) if e > start)
    last = max(i for i, (s, _) in enumerate(offsets) if s < end)
    return first, last


def encode_qa(
    examples: list[QAExample],
    tokenizer: Tokenizer,
    family: str,
    max_seq_len: int,
    labels: list[str] | None,
    doc_stride: int = 128,
) -> list[dict]:
    """One feature per window: ids, segment ids, `example` (its index), `offsets` (a context token's characters,
    None elsewhere) and, when labelled, the answer's (first, last) token, or (0, 0) ([CLS]) when not all inside."""
    if family != "bert":
        raise LmforgeError("extractive QA needs an encoder (BERT, RoBERTa, ALBERT): give a bert-family --model")
    question_cap = min(MAX_QUESTION, max_seq_len // 2)
    if doc_stride >= max_seq_len - question_cap - 3:
        raise LmforgeError(
            f"--doc-stride {doc_stride} must be below the context tokens a window holds "
            f"({max_seq_len - question_cap - 3} with --max-seq-len {max_seq_len}); lower it or raise --max-seq-len"
        )
    questions = tokenizer.backend.encode_batch([ex.question for ex in examples], add_special_tokens=False)
    contexts = tokenizer.backend.encode_batch([ex.context for ex in examples], add_special_tokens=False)
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    features = []
    for n, (ex, q, c) in enumerate(zip(examples, questions, contexts, strict=True)):
        q_ids = q.ids[:question_cap]
        budget, lead = max_seq_len - len(q_ids) - 3, len(q_ids) + 2
        answer = None
        if labels is not None and ex.answers:
            text, start = ex.answers[0]
            answer = token_span(c.offsets, start, start + len(text))
        a = 0
        while True:
            b = min(a + budget, len(c.ids))
            ids = [cls, *q_ids, sep, *c.ids[a:b], sep]
            label = (IGNORE, IGNORE)
            if labels is not None:
                inside = answer is not None and a <= answer[0] and answer[1] < b
                label = (answer[0] - a + lead, answer[1] - a + lead) if inside else (0, 0)
            features.append({
                "input_ids": ids,
                "token_type_ids": [0] * lead + [1] * (b - a + 1),
                "label": label,
                "example": n,
                "offsets": [None] * lead + list(c.offsets[a:b]) + [None],
            })  # fmt: skip
            if b >= len(c.ids):
                break
            a = b - doc_stride
    return features


class QuestionAnswering(Task):
    name, metric, max_seq_len, class_labels = "qa", "f1", 384, False

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list[QAExample]:
        return nonempty(read_qa(path, columns, labelled), path)

    def labels(self, examples: list[QAExample], path: str | Path) -> list[str]:
        return list(SPAN_LABELS)

    def check(self, examples: list[QAExample], labels: list[str], path: str | Path) -> None:
        """Answers are spans of the context: there is no label set to check against."""

    def encode(
        self, examples: list[QAExample], tokenizer: Tokenizer, family: str, task: TaskConfig, labelled: bool
    ) -> list[dict]:
        labels = task.labels if labelled else None
        return encode_qa(examples, tokenizer, family, task.max_seq_len, labels, task.doc_stride)

    def build_head(self, backbone: nn.Module, task: TaskConfig) -> nn.Module:
        return SpanExtractor(backbone)

    def score(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> dict:
        return qa_metrics(examples, features, probs, task.max_answer_len)

    def records(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> list[dict]:
        return qa_records(examples, features, probs, task.max_answer_len)

    def example(self, text: str, pair: str | None, n: int) -> QAExample:
        if pair is None:
            raise LmforgeError("a QA model answers --text QUESTION about --context CONTEXT: give the context")
        return QAExample(f"--text {n}", str(n), text, pair, [])
