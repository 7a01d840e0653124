"""Extractive QA answers and their scores: the best legal span over an example's windows, mapped back to the
context's characters, and SQuAD v1.1's exact match and F1 (the official evaluate-v1.1.py formulas). Examples are
anything with a .context and gold .answers as (text, start) pairs (tasks.qa.QAExample)."""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

import torch

TOP = 20  # start and end candidates per window, as in BERT's run_squad.py (n_best_size)


@dataclass
class Answer:
    text: str
    start: int  # characters [start, end) of the context
    end: int
    score: float  # p(start) * p(end) in its window


def best_span(probs: torch.Tensor, offsets: list, max_answer_len: int) -> tuple[float, int, int] | None:
    """(score, first token, last token) of the most probable span of one window with first <= last, at most
    max_answer_len tokens, both in the context; None when the window holds no context. probs: (2, T)."""
    context = torch.tensor([o is not None for o in offsets] + [False] * (probs.size(1) - len(offsets)))
    if not context.any():
        return None
    k = min(TOP, int(context.sum()))
    starts = probs[0].masked_fill(~context, -1).topk(k)
    ends = probs[1].masked_fill(~context, -1).topk(k)
    best = None
    for ps, s in zip(starts.values.tolist(), starts.indices.tolist(), strict=True):
        for pe, e in zip(ends.values.tolist(), ends.indices.tolist(), strict=True):
            if s <= e < s + max_answer_len and (best is None or ps * pe > best[0]):
                best = (ps * pe, s, e)
    return best


def answers(examples: list, features: list[dict], probs: list[torch.Tensor], max_answer_len: int = 30) -> list[Answer]:
    """Each example's best span over all its windows, as characters of its context (surrounding spaces trimmed)."""
    best: list[tuple[float, int, int] | None] = [None] * len(examples)
    for f, p in zip(features, probs, strict=True):
        span = best_span(p, f["offsets"], max_answer_len)
        n = f["example"]
        if span is not None and (best[n] is None or span[0] > best[n][0]):
            best[n] = (span[0], f["offsets"][span[1]][0], f["offsets"][span[2]][1])
    out = []
    for ex, b in zip(examples, best, strict=True):
        score, start, end = b or (0.0, 0, 0)
        text = ex.context[start:end]
        start += len(text) - len(text.lstrip())
        out.append(Answer(text.strip(), start, start + len(text.strip()), score))
    return out


def normalize_answer(s: str) -> str:
    """SQuAD's: lower case, no punctuation, no articles (a, an, the), single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Harmonic mean of the precision and recall of the normalised words (counted with multiplicity)."""
    pred, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], golds: list[list[str]]) -> dict:
    """Mean over questions of the best exact match and F1 against any gold answer, as fractions (the official
    script prints them x 100)."""
    em = [max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True)]
    f = [max(f1(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True)]
    n = max(len(predictions), 1)
    return {"exact_match": sum(em) / n, "f1": sum(f) / n, "n_examples": len(predictions)}


def qa_metrics(examples: list, features: list[dict], probs: list[torch.Tensor], max_answer_len: int) -> dict:
    predicted = answers(examples, features, probs, max_answer_len)
    return squad_metrics([a.text for a in predicted], [[t for t, _ in ex.answers] for ex in examples])


def qa_records(examples: list, features: list[dict], probs: list[torch.Tensor], max_answer_len: int) -> list[dict]:
    """One prediction per question: the answer, its character span in the context and its probability."""
    return [
        {
            "id": ex.id,
            "question": ex.question,
            "answer": a.text,
            "start": a.start,
            "end": a.end,
            "score": round(a.score, 6),
        }
        for ex, a in zip(examples, answers(examples, features, probs, max_answer_len), strict=True)
    ]
