"""Scores of generated text against references, computed by the reference implementations (sacreBLEU for BLEU and
chrF, Google's rouge-score for ROUGE) so that the figures compare with published ones."""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.errors import LmforgeError


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise LmforgeError(
            f"{len(hypotheses)} hypotheses against {len(references)} references: every output needs its reference"
        )
    if not hypotheses:
        raise LmforgeError("no hypotheses to score: give at least one output and its reference")


def bleu_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU (sacreBLEU's defaults: 13a tokenization of detokenized text, exponential smoothing) and chrF, on
    sacreBLEU's 0-100 scale, with the signatures that say how they were computed."""
    from sacrebleu.metrics import BLEU, CHRF

    _check_pairs(hypotheses, references)
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": bleu.corpus_score(list(hypotheses), [list(references)]).score,
        "chrf": chrf.corpus_score(list(hypotheses), [list(references)]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Porter stemming), the mean over examples, on a 0-100 scale like
    BLEU's."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(hypotheses, references)
    names = ("rouge1", "rouge2", "rougeL")
    scorer = RougeScorer(list(names), use_stemmer=True)
    scores = [scorer.score(reference, hypothesis) for hypothesis, reference in zip(hypotheses, references, strict=True)]
    return {name: 100 * sum(s[name].fmeasure for s in scores) / len(scores) for name in names}
