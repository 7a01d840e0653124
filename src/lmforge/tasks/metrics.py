"""Task metrics: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix; NER entity-level
precision/recall/F1 counted the way seqeval (and conlleval) count them; TACRED's micro-F1 for relations."""

from __future__ import annotations

import torch

NO_RELATION = ("no_relation", "NA", "Other", "other", "None")  # the "neither" label of TACRED, FewRel/NYT, SemEval


def _prf(correct: int, predicted: int, true: int, support: int) -> dict:
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": support}


def classification_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    """Accuracy, macro-F1 (the unweighted mean over classes), per-class P/R/F1 and the confusion matrix (rows:
    true label, columns: predicted label)."""
    k = len(labels)
    matrix = torch.zeros(k, k, dtype=torch.long)
    for g, p in zip(gold, pred, strict=True):
        matrix[g, p] += 1
    diag = matrix.diag()
    per_class = {
        label: _prf(int(diag[i]), int(matrix[:, i].sum()), int(matrix[i].sum()), int(matrix[i].sum()))
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": int(diag.sum()) / max(len(gold), 1),
        "macro_f1": sum(c["f1"] for c in per_class.values()) / k,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "labels": labels,
        "n_examples": len(gold),
    }


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """The (type, first, last) entities of an IOB2 tag sequence. As in conlleval and seqeval's default mode, an I-
    that does not continue an entity of its type (after O, or after another type) starts a new one."""
    spans, open_type, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = ("O", None) if tag == "O" else tag.split("-", 1)
        if open_type is not None and (prefix in ("B", "O") or kind != open_type):
            spans.add((open_type, start, i - 1))
            open_type = None
        if prefix == "B" or (prefix == "I" and open_type is None):
            open_type, start = kind, i
    return spans


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro-averaged entity precision/recall/F1 over all sentences (an entity counts only when its type and both
    ends match), and the same per entity type."""
    true_spans, pred_spans = set(), set()
    for n, (g, p) in enumerate(zip(gold, pred, strict=True)):
        true_spans |= {(n, *s) for s in entity_spans(g)}
        pred_spans |= {(n, *s) for s in entity_spans(p)}
    correct = true_spans & pred_spans
    types = sorted({s[1] for s in true_spans | pred_spans})

    def count(spans, kind):
        return sum(1 for s in spans if s[1] == kind)

    overall = _prf(len(correct), len(pred_spans), len(true_spans), len(true_spans))
    return {
        **{k: v for k, v in overall.items()},
        "per_type": {
            t: _prf(count(correct, t), count(pred_spans, t), count(true_spans, t), count(true_spans, t)) for t in types
        },
        "n_sentences": len(gold),
    }


def relation_metrics(gold: list[int], pred: list[int], labels: list[str]) -> dict:
    """Classification metrics, and with a "no relation" label, TACRED's micro-F1: precision over the relations
    predicted and recall over the true ones, both leaving that label out."""
    report = classification_metrics(gold, pred, labels)
    none = next((labels.index(n) for n in NO_RELATION if n in labels), None)
    if none is not None:
        correct = sum(g == p != none for g, p in zip(gold, pred, strict=True))
        predicted, true = sum(p != none for p in pred), sum(g != none for g in gold)
        report["micro_f1"] = _prf(correct, predicted, true, true)["f1"]
    return report
