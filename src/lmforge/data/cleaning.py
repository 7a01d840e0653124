"""lmforge clean: text, JSONL or CSV corpora in, one cleaned corpus out (PII redacted, duplicates removed, not
tokenized), with cleaning_report.json and cleaning_report.html beside it."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from pathlib import Path

from lmforge.atomic import check_output_file, write_text_atomic
from lmforge.data.clean import BLANK_LINE, clean_documents, clean_text
from lmforge.data.dedup import check_dedup
from lmforge.data.prepare import input_list, read_text
from lmforge.data.records import is_records, read_records
from lmforge.errors import LmforgeError

REPORT_JSON = "cleaning_report.json"
REPORT_HTML = "cleaning_report.html"


def read_corpus(path: str | Path) -> list[str]:
    """The documents of a file as training reads them: a .jsonl/.csv record's "text" each, else blank-line separated."""
    if is_records(path):
        return [doc for doc in map(clean_text, read_records(path)[0]) if doc.strip()]
    return [doc for doc in BLANK_LINE.split(clean_text(read_text(path))) if doc.strip()]


def render(documents: list[str], jsonl: bool) -> str:
    """JSON lines of {"text": ...}, or the documents separated by blank lines."""
    if jsonl:
        return "".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in documents)
    return "\n\n".join(doc.strip("\n") for doc in documents) + "\n"


def clean_files(
    inputs: Sequence[str | Path],
    out: str | Path,
    redact_pii: bool = False,
    dedup: str = "none",
    threshold: float = 0.8,
    progress: bool = True,
) -> dict:
    """Reads, cleans and writes the corpus (out and both reports written atomically, after all the work) and returns
    the report: documents and bytes in and out, PII per type, duplicates removed (exact, near) and a few examples,
    seconds."""
    start = time.perf_counter()
    check_dedup(dedup, threshold)
    inputs = input_list(inputs)
    out = Path(out)
    for source in inputs:
        check_output_file(out, {"--input": source}, "--out")
    documents = [doc for path in inputs for doc in read_corpus(path)]
    if not documents:
        raise LmforgeError(f"{', '.join(map(str, inputs))}: no documents (only whitespace): give files with text")
    kept, documents, report = clean_documents(documents, redact_pii, dedup, threshold, progress)
    text = render([documents[i] for i in kept], out.suffix.lower() == ".jsonl")
    dedup_report = report.pop("dedup")
    report = {
        "inputs": [str(p) for p in inputs],
        "output": str(out),
        "documents_in": len(documents),
        "documents_out": len(kept),
        "bytes_in": sum(Path(p).stat().st_size for p in inputs),
        "bytes_out": len(text.encode()),
        **report,
        "dedup": dedup_report["mode"],
        "dedup_threshold": threshold if dedup == "near" else None,
        "exact_duplicates": dedup_report.get("exact_duplicates", 0),
        "near_duplicates": dedup_report.get("near_duplicates", 0),
        "examples": dedup_report.get("examples", []),
        "seconds": round(time.perf_counter() - start, 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    write_text_atomic(out.parent / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out.parent / REPORT_HTML, report_html(report))
    return report


def report_html(report: dict) -> str:
    """A self-contained page: the counts in two tables and the examples of removed duplicates."""
    e = html.escape
    rows = [
        ("inputs", ", ".join(report["inputs"])),
        ("output", report["output"]),
        ("documents in / out", f"{report['documents_in']} / {report['documents_out']}"),
        ("bytes in / out", f"{report['bytes_in']} / {report['bytes_out']}"),
        ("duplicates removed (exact, near)", f"{report['exact_duplicates']}, {report['near_duplicates']}"),
        (
            "dedup",
            f"{report['dedup']}" + (f" (threshold {report['dedup_threshold']})" if report["dedup_threshold"] else ""),
        ),
        ("seconds", report["seconds"]),
    ]
    pii = report["pii"] or {}
    examples = "".join(
        f"<tr><td>{e(x['kind'])}</td><td>{x['duplicate_of']}</td><td><code>{e(x['text'])}</code></td></tr>"
        for x in report["examples"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Cleaning report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>Cleaning report</h1>
<table>{"".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)}</table>
<h2>PII redacted</h2>
<table><tr><th>type</th><th>count</th></tr>{
        "".join(f"<tr><td>&lt;{e(k)}&gt;</td><td>{v}</td></tr>" for k, v in pii.items())
        or '<tr><td colspan="2">redaction off</td></tr>'
    }</table>
<h2>Removed duplicates (first {len(report["examples"])})</h2>
<table><tr><th>kind</th><th>duplicate of document</th><th>text (first 80 characters)</th></tr>{examples}</table>
</body></html>
"""
