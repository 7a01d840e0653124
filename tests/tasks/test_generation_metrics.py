import math

import pytest
import sacrebleu
from rouge_score.rouge_scorer import RougeScorer

from lmforge.errors import LmforgeError
from lmforge.tasks.generation_metrics import bleu_chrf, rouge

HYPS = ["the cat sat on the mat", "a dog ran in the park today", "birds were singing loudly"]
REFS = ["the cat sat on the mat today", "the dog was running in the park", "the birds sang loudly"]


def test_identical_text_scores_100():
    text = ["the quick brown fox jumps over the lazy dog", "a red bird sings on the green tree"]
    scores = bleu_chrf(text, text) | rouge(text, text)
    for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"):
        assert scores[name] == pytest.approx(100.0)


def test_bleu_by_hand_is_the_brevity_penalty_when_every_ngram_matches():
    # 6 of 7 reference words, in order: every n-gram precision is 1, so BLEU = BP = exp(1 - 7 / 6)
    scores = bleu_chrf(["the cat sat on the mat"], ["the cat sat on the mat today"])
    assert scores["bleu"] == pytest.approx(100 * math.exp(1 - 7 / 6))


def test_rouge_by_hand():
    # 3 of the reference's 6 words (P 1, R 1/2), 2 of its 5 bigrams (P 1, R 2/5); the LCS is the 3 words
    scores = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(100 * 2 / 3)
    assert scores["rouge2"] == pytest.approx(100 * 2 * 0.4 / 1.4)
    assert scores["rougeL"] == pytest.approx(100 * 2 / 3)


def test_figures_and_signatures_are_the_libraries_own():
    scores = bleu_chrf(HYPS, REFS)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert "tok:13a" in scores["bleu_signature"] and "version:" in scores["chrf_signature"]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = [scorer.score(r, h) for h, r in zip(HYPS, REFS, strict=True)]
    for name, value in rouge(HYPS, REFS).items():
        assert value == pytest.approx(100 * sum(e[name].fmeasure for e in expected) / len(expected))


def test_stemming_counts_inflections_as_matches():
    assert rouge(["dogs running"], ["dog runs"])["rouge1"] == pytest.approx(100.0)


@pytest.mark.parametrize("score", [bleu_chrf, rouge])
def test_unequal_lengths_and_nothing_to_score_are_one_clear_error(score):
    with pytest.raises(LmforgeError, match="2 hypotheses against 1 references"):
        score(["a b", "c d"], ["a b"])
    with pytest.raises(LmforgeError, match="no hypotheses"):
        score([], [])
