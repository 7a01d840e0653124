import json
import random

import pytest
from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics import f1_score, precision_score, recall_score
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.metrics import f1_score as sk_f1

from lmforge.inference.evaluate import markdown_report, write_report
from lmforge.tasks.metrics import classification_metrics, entity_metrics, entity_spans

EDGE_CASES = [
    ["I-PER", "I-PER", "O"],  # I- without B- starts an entity
    ["B-PER", "I-LOC", "I-LOC"],  # a type change inside an entity starts another
    ["O", "I-LOC", "B-LOC", "I-LOC"],
    ["B-PER", "B-PER", "I-PER"],
    ["I-MISC"],
    ["O", "O"],
    [],
]


def random_tags(rng, n):
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]) for _ in range(n)]


def assert_equals_seqeval(gold, pred):
    ours = entity_metrics(gold, pred)
    assert ours["precision"] == pytest.approx(precision_score(gold, pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(recall_score(gold, pred), abs=1e-12)
    assert ours["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12)
    theirs = seqeval_report(gold, pred, output_dict=True, zero_division=0)
    for kind, row in ours["per_type"].items():
        for name in ("precision", "recall", "f1"):
            assert row[name] == pytest.approx(theirs[kind][{"f1": "f1-score"}.get(name, name)], abs=1e-12)
        assert row["support"] == theirs[kind]["support"]


def test_entity_metrics_equal_seqeval_on_random_sequences():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(0, 12) for _ in range(rng.randint(1, 6))]
        gold = [random_tags(rng, n) for n in lengths]
        pred = [[t if rng.random() < 0.7 else rng.choice(random_tags(rng, 1)) for t in g] for g in gold]
        if any(entity_spans(g) for g in gold) and any(entity_spans(p) for p in pred):
            assert_equals_seqeval(gold, pred)


def test_entity_metrics_equal_seqeval_on_edge_cases():
    pred = [
        ["B-PER", "I-PER", "O"],
        ["B-PER", "B-LOC", "I-LOC"],
        ["O", "B-LOC", "B-LOC", "I-LOC"],
        ["B-PER", "O", "I-PER"],
        ["O"],
        ["B-PER", "O"],
        [],
    ]
    assert_equals_seqeval(EDGE_CASES, pred)
    assert_equals_seqeval(EDGE_CASES, EDGE_CASES)
    assert entity_spans(["I-PER", "I-PER", "O"]) == {("PER", 0, 1)}
    assert entity_spans(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}


def test_no_predicted_entities_scores_zero():
    scores = entity_metrics([["B-PER", "O"]], [["O", "O"]])
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)


def test_classification_metrics_match_sklearn():
    rng = random.Random(1)
    gold = [rng.randrange(3) for _ in range(300)]
    pred = [g if rng.random() < 0.6 else rng.randrange(3) for g in gold]
    labels = ["a", "b", "c"]
    m = classification_metrics(gold, pred, labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert m["macro_f1"] == pytest.approx(sk_f1(gold, pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=[0, 1, 2], zero_division=0)
    for i, label in enumerate(labels):
        row = m["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert m["confusion_matrix"] == confusion_matrix(gold, pred).tolist()


def test_reports_are_written_as_json_markdown_and_png(tmp_path):
    report = {"checkpoint": "ck", "data": "dev.csv", **classification_metrics([0, 1, 1], [0, 1, 0], ["neg", "pos"])}
    written = write_report(report, tmp_path / "eval")
    assert [p.name for p in written] == ["report.json", "report.md", "confusion.png"]
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["accuracy"] == pytest.approx(2 / 3)
    md = markdown_report(report)
    assert "| neg | 1 | 0 |" in md and "| pos | 1 | 1 |" in md and "- accuracy: 0.6667" in md
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "eval").glob(".tmp-*"))
