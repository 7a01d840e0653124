"""Evaluation of a fine-tuned checkpoint on labelled data, or of an encoder-decoder on sentence pairs, and its report:
the task's metrics (BLEU, chrF and ROUGE for an encoder-decoder) as JSON, markdown and (classification) a
confusion-matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.atomic import check_output_dir, write_text_atomic
from lmforge.checkpoint.files import Loaded
from lmforge.checkpoint.loader import load, require_task
from lmforge.data.parallel import Pairs, read_aligned, read_parallel
from lmforge.data.records import check_data_file
from lmforge.errors import LmforgeError
from lmforge.generation.seq2seq import as_lines, check_options, check_seq2seq, generate_seq2seq
from lmforge.inference.predict import check_batch_size, columns_of, encode, pad_id_of, predict_features
from lmforge.plots import plot_confusion
from lmforge.tasks import get_task
from lmforge.tasks.generation_metrics import bleu_chrf, rouge

# a report's top lines: a task's metrics, or an encoder-decoder's
HEADLINE = ("accuracy", "macro_f1", "micro_f1", "exact_match", "precision", "recall", "f1")
HEADLINE += ("bleu", "chrf", "rouge1", "rouge2", "rougeL")
SIGNATURES = ("bleu_signature", "chrf_signature")  # how sacreBLEU computed its scores


def markdown_report(report: dict) -> str:
    """The report as markdown: the headline numbers, a per-class (or per-type) table and the confusion matrix."""
    rows = report.get("per_class") or report.get("per_type") or {}
    head = [k for k in HEADLINE if k in report]
    lines = [f"# Evaluation of {report['checkpoint']} on {report['data']}", ""]
    lines += [f"- {name}: {report[name]:.4f}" for name in head]
    lines += [f"- {name}: {report[name]}" for name in SIGNATURES if name in report]
    if rows:
        lines += ["", "| label | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for name, v in rows.items():
        lines.append(f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |")
    if "confusion_matrix" in report:
        labels = report["labels"]
        lines += ["", "Confusion matrix (rows: true label, columns: predicted):", ""]
        lines += ["| true \\ predicted | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
        for label, row in zip(labels, report["confusion_matrix"], strict=True):
            lines.append(f"| {label} | " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> list[Path]:
    """report.json, report.md and (classification) confusion.png in out, each written whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "report.md", markdown_report(report))
    written = [out / "report.json", out / "report.md"]
    if "confusion_matrix" in report:
        written.append(plot_confusion(report["confusion_matrix"], report["labels"], out / "confusion.png"))
    return written


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str | None = None,
    compare: str | None = None,
    compile: bool = False,
) -> tuple[dict, list[Path]]:
    """Scores a fine-tuned checkpoint on a labelled file and writes the report (default: CHECKPOINT/eval-STEM). The
    data, the batch size and a given out are checked before the model loads, the default out once it has loaded. A
    pretrained encoder-decoder is scored as evaluate_seq2seq scores it, on a file's source and target columns.

    dtype runs the model quantized on the fly; compare (e.g. "fp32") scores it a second time in that precision and
    puts those scores in the report's `compare` section, so the report shows what the precision costs. compile runs
    both under torch.compile (lmforge.kernels.compiled)."""
    check_data_file(Path(data))
    check_batch_size(batch_size)
    if out is not None:
        check_output_dir(out, {"--data": data, "the checkpoint": checkpoint})
    loaded = load(checkpoint, device, dtype=dtype, compile=compile)
    if loaded.task is None and loaded.config.family == "t5":  # a pretrained encoder-decoder: the file holds pairs
        pairs = seq2seq_pairs(data, "source", "target")
        return _evaluate_seq2seq(loaded, checkpoint, data, pairs, out, 4, batch_size, device, compare, compile)
    out = _default_out(checkpoint, data) if out is None else Path(out)
    report = {"checkpoint": str(checkpoint), "data": str(data), "task": require_task(loaded).task.task}
    report |= score_task(loaded, data, batch_size, device)
    if compare is not None:
        report["dtype"] = loaded.dtype
        report["compare"] = {
            compare: score_task(load(checkpoint, device, dtype=compare, compile=compile), data, batch_size, device)
        }
    return report, write_report(report, out)


def score_task(loaded: Loaded, data: str | Path, batch_size: int, device: str) -> dict:
    """A fine-tuned model's task metrics on a labelled file."""
    model, tokenizer, task = loaded.model, loaded.tokenizer, loaded.task
    kind = get_task(task.task)
    examples = kind.read(Path(data), columns_of(task))
    kind.check(examples, task.labels, data)
    features = encode(examples, tokenizer, model, task, labelled=True)
    probs = predict_features(model, features, pad_id_of(tokenizer), batch_size, device, kind, tokenizer)
    return kind.score(task, examples, features, probs)


def seq2seq_pairs(data: str | Path, source: str, target: str) -> Pairs:
    """The pairs to score: a directory's val split (val.SOURCE and val.TARGET; no train files needed), else its train
    split, or a .tsv / .jsonl file's pairs."""
    data = Path(data)
    if data.is_dir() and (data / f"val.{source}").exists():
        return read_aligned(data / f"val.{source}", data / f"val.{target}")
    if data.is_dir() and not (data / f"train.{source}").exists():
        raise LmforgeError(f"{data} holds no val.{source}: evaluation reads val.{source} and val.{target} there")
    splits = read_parallel(data, source, target)
    return splits.get("val", splits["train"])


def evaluate_seq2seq(
    checkpoint: str | Path,
    data: str | Path,
    source: str,
    target: str,
    out: str | Path | None = None,
    num_beams: int = 4,
    batch_size: int = 32,
    device: str = "cpu",
    dtype: str | None = None,
    compare: str | None = None,
    compile: bool = False,
) -> tuple[dict, list[Path]]:
    """Scores an encoder-decoder's outputs for the sources of parallel data against their targets (BLEU, chrF,
    ROUGE) and writes the report and hypotheses.txt (default: CHECKPOINT/eval-STEM). The data, the settings and a
    given out are checked before the model loads. dtype, compare and compile as evaluate_checkpoint's."""
    pairs = seq2seq_pairs(data, source, target)
    check_options(num_beams=num_beams, batch_size=batch_size)
    if out is not None:
        check_output_dir(out, {"--data": data, "the checkpoint": checkpoint})
    loaded = load(checkpoint, device, dtype=dtype, compile=compile)
    check_seq2seq(loaded, "lmforge evaluate --source --target")
    return _evaluate_seq2seq(loaded, checkpoint, data, pairs, out, num_beams, batch_size, device, compare, compile)


def _evaluate_seq2seq(
    loaded: Loaded, checkpoint: str | Path, data: str | Path, pairs: Pairs, out: str | Path | None,
    num_beams: int, batch_size: int, device: str, compare: str | None, compile: bool,
) -> tuple[dict, list[Path]]:  # fmt: skip
    out = _default_out(checkpoint, data) if out is None else Path(out)
    hypotheses, scores = _seq2seq_scores(loaded, pairs, num_beams, batch_size, device)
    report = {"checkpoint": str(checkpoint), "data": pairs.where, "task": "seq2seq", "examples": len(hypotheses)}
    report |= {"num_beams": num_beams} | scores
    if compare is not None:
        other = load(checkpoint, device, dtype=compare, compile=compile)
        report |= {
            "dtype": loaded.dtype,
            "compare": {compare: _seq2seq_scores(other, pairs, num_beams, batch_size, device)[1]},
        }
    written = write_report(report, out)
    write_text_atomic(out / "hypotheses.txt", as_lines(hypotheses))
    return report, [*written, out / "hypotheses.txt"]


def _seq2seq_scores(
    loaded: Loaded, pairs: Pairs, num_beams: int, batch_size: int, device: str
) -> tuple[list[str], dict]:
    hypotheses = generate_seq2seq(
        check_seq2seq(loaded), loaded.tokenizer, pairs.source, num_beams=num_beams, batch_size=batch_size, device=device
    )
    return hypotheses, bleu_chrf(hypotheses, pairs.target) | rouge(hypotheses, pairs.target)


def _default_out(checkpoint: str | Path, data: str | Path) -> Path:
    return check_output_dir(Path(checkpoint) / f"eval-{Path(data).stem}")
