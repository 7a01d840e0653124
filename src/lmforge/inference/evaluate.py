"""Evaluation of a fine-tuned checkpoint on labelled data, and its report: the task's metrics as JSON, markdown and
(classification) a confusion-matrix PNG."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.atomic import check_output_dir, write_text_atomic
from lmforge.checkpoint.loader import load_finetuned
from lmforge.data.records import check_data_file
from lmforge.inference.predict import check_batch_size, columns_of, encode, pad_id_of, predict_features
from lmforge.plots import plot_confusion
from lmforge.tasks import get_task

HEADLINE = ("accuracy", "macro_f1", "micro_f1", "exact_match", "precision", "recall", "f1")  # a report's top lines


def markdown_report(report: dict) -> str:
    """The report as markdown: the headline numbers, a per-class (or per-type) table and the confusion matrix."""
    rows = report.get("per_class") or report.get("per_type") or {}
    head = [k for k in HEADLINE if k in report]
    lines = [f"# Evaluation of {report['checkpoint']} on {report['data']}", ""]
    lines += [f"- {name}: {report[name]:.4f}" for name in head]
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
    checkpoint: str | Path, data: str | Path, out: str | Path | None = None, batch_size: int = 64, device: str = "cpu"
) -> tuple[dict, list[Path]]:
    """Scores a fine-tuned checkpoint on a labelled file and writes the report (default: CHECKPOINT/eval-STEM). The
    data, the batch size and a given out are checked before the model loads, the default out once it has loaded."""
    check_data_file(Path(data))
    check_batch_size(batch_size)
    if out is not None:
        check_output_dir(out, {"--data": data, "the checkpoint": checkpoint})
    model, tokenizer, task = load_finetuned(checkpoint, device)
    out = check_output_dir(Path(checkpoint) / f"eval-{Path(data).stem}") if out is None else Path(out)
    kind = get_task(task.task)
    examples = kind.read(Path(data), columns_of(task))
    kind.check(examples, task.labels, data)
    features = encode(examples, tokenizer, model, task, labelled=True)
    probs = predict_features(model, features, pad_id_of(tokenizer), batch_size, device, kind)
    report = {"checkpoint": str(checkpoint), "data": str(data), "task": task.task}
    report |= kind.score(task, examples, features, probs)
    return report, write_report(report, out)
