import random
import re
import string
from collections import Counter

import pytest
import torch

from lmforge.tasks.qa import QAExample
from lmforge.tasks.squad import answers, best_span, exact_match, f1, normalize_answer, squad_metrics


def official_normalize(s):
    """evaluate-v1.1.py's normalize_answer, as published with SQuAD v1.1."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


@pytest.mark.parametrize(
    ("prediction", "gold", "em", "f"),
    [
        ("The Seine", "seine", 1.0, 1.0),
        ("the Seine river", "Seine", 0.0, 2 / 3),  # P = 1/2, R = 1
        ("a b c", "b c d", 0.0, 0.8),  # "a" is an article: P = 1, R = 2/3
        ("paris paris", "Paris!", 0.0, 2 / 3),  # words count with multiplicity
        ("An  apple, a day.", "apple day", 1.0, 1.0),
        ("rome", "paris", 0.0, 0.0),
        ("the", "a", 1.0, 0.0),  # both normalise to nothing: equal, but no words in common
    ],
)
def test_exact_match_and_f1_by_hand(prediction, gold, em, f):
    assert exact_match(prediction, gold) == em
    assert f1(prediction, gold) == pytest.approx(f)


def test_matches_the_official_formulas_on_random_strings():
    rng = random.Random(0)
    words = ["the", "a", "an", "Paris", "paris,", "Seine", "river.", "2,1", "l'eau", "THE", "Ähre", "(x)", " ", "-"]
    for _ in range(500):
        p, g = (" ".join(rng.choices(words, k=rng.randint(0, 6))) for _ in range(2))
        assert normalize_answer(p) == official_normalize(p)
        assert f1(p, g) == pytest.approx(official_f1(p, g))


def test_metrics_take_the_best_gold_and_average():
    report = squad_metrics(["Seine", "rome"], [["The Seine"], ["paris", "rome city"]])
    assert report["exact_match"] == 0.5
    assert report["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert report["n_examples"] == 2


def window_probs(starts, ends):
    return torch.tensor([starts, ends], dtype=torch.float)


def test_best_span_is_legal():
    offsets = [None, None, (0, 2), (3, 5), (6, 8), None]  # [CLS] q [SEP]-like prefix, three context tokens, [SEP]
    #                      CLS   q    c0   c1   c2   SEP
    probs = window_probs([0.5, 0.3, 0.0, 0.15, 0.05, 0.0], [0.6, 0.0, 0.2, 0.12, 0.08, 0.0])
    score, s, e = best_span(probs, offsets, max_answer_len=30)
    assert (s, e) == (3, 3) and score == pytest.approx(0.15 * 0.12)  # c1..c1; never CLS or the question
    probs = window_probs([0, 0, 0.9, 0.05, 0.05, 0], [0, 0, 0.0, 0.1, 0.9, 0])
    assert best_span(probs, offsets, 30)[1:] == (2, 4)
    assert best_span(probs, offsets, 2)[1:] == (2, 3)  # 2..4 is too long; 2..3 (0.09) beats 3..4 (0.045)
    probs = window_probs([0, 0, 0.1, 0.1, 0.8, 0], [0, 0, 0.8, 0.1, 0.1, 0])  # end before start is never picked
    score, s, e = best_span(probs, offsets, 30)
    assert s <= e and score == pytest.approx(max(0.8 * 0.1, 0.1 * 0.8, 0.1 * 0.1))
    assert best_span(probs, [None] * 6, 30) is None


def test_answers_pick_the_best_window_and_map_to_characters():
    context = "alice met bob in rome"
    ex = QAExample("x", "1", "who", context, [])
    first = {"example": 0, "offsets": [None, None, (0, 5), (5, 9), (9, 13), None]}  # BPE-like: leading spaces
    second = {"example": 0, "offsets": [None, None, (9, 13), (13, 16), (16, 21), None]}
    p1 = window_probs([0, 0, 0.7, 0.2, 0.1, 0], [0, 0, 0.7, 0.2, 0.1, 0])
    p2 = window_probs([0, 0, 0.9, 0.05, 0.05, 0], [0, 0, 0.9, 0.05, 0.05, 0])
    (a,) = answers([ex], [first, second], [p1, p2])
    assert (a.text, a.start, a.end) == ("bob", 10, 13) and a.score == pytest.approx(0.81)
    assert context[a.start : a.end] == a.text
