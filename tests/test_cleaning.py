"""lmforge clean end to end, cleaning inside data prepare (meta.json, the cache key), and bad input: one line, exit 2,
nothing written."""

import json

import pytest

from lmforge.cli.main import main
from lmforge.config.run import DataConfig
from lmforge.data import ensure_prepared, load_documents, load_prepared
from lmforge.errors import LmforgeError

SECRET = "alice.smith@example.com"
DOCS = [
    f"Write to {SECRET} or call +1 415 555 0132 about the card 4111 1111 1111 1111.",
    "The quality of mercy is not strained; it droppeth as the gentle rain from heaven upon the place beneath.",
    "Now is the winter of our discontent made glorious summer by this sun of York, and all the clouds that lowered.",
    "the quality of mercy  is not strained; it droppeth as the gentle rain from heaven upon the place beneath.",
    "Now is the winter of our discontent made glorious summer by this sun of York -- and all the clouds that lowered!",
]  # 3 is an exact duplicate of 1 (case and spaces), 4 a near one of 2 (punctuation)


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    return path


def test_clean_verb_writes_text_jsonl_and_reports(tmp_path, corpus, capsys):
    out = tmp_path / "out" / "clean.jsonl"
    code, stdout, _ = run(capsys, "clean", "--input", corpus, "--out", out, "--redact-pii", "--dedup", "near")
    assert code == 0 and "5 -> 3 documents" in stdout
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == [
        "Write to <EMAIL> or call <PHONE> about the card <CREDIT_CARD>.", DOCS[1], DOCS[2]
    ]  # fmt: skip
    report = json.loads((out.parent / "cleaning_report.json").read_text(encoding="utf-8"))
    assert report["pii"]["EMAIL"] == report["pii"]["PHONE"] == report["pii"]["CREDIT_CARD"] == 1
    assert (report["exact_duplicates"], report["near_duplicates"]) == (1, 1)
    assert (report["documents_in"], report["documents_out"]) == (5, 3)
    assert report["bytes_in"] == corpus.stat().st_size and report["bytes_out"] == out.stat().st_size
    assert [x["kind"] for x in report["examples"]] == ["exact", "near"] and report["seconds"] >= 0
    page = (out.parent / "cleaning_report.html").read_text(encoding="utf-8")
    assert "&lt;EMAIL&gt;" in page and "droppeth" in page
    assert all(SECRET not in f.read_text(encoding="utf-8") for f in out.parent.iterdir())

    text_out = tmp_path / "clean.txt"
    code, _, _ = run(capsys, "clean", "--input", corpus, "--out", text_out, "--dedup", "exact", "--no-progress")
    assert code == 0
    assert text_out.read_text(encoding="utf-8") == "\n\n".join(DOCS[:3] + DOCS[4:]) + "\n"  # text as it was


def test_clean_reads_jsonl_and_csv(tmp_path, capsys):
    jsonl, csv = tmp_path / "a.jsonl", tmp_path / "b.csv"
    jsonl.write_text(json.dumps({"text": DOCS[0]}) + "\n" + json.dumps({"text": DOCS[1]}) + "\n", encoding="utf-8")
    csv.write_text(f'id,text\n1,"{DOCS[1]}"\n2,"{DOCS[2]}"\n', encoding="utf-8")
    out = tmp_path / "out.txt"
    code, _, _ = run(capsys, "clean", "--input", jsonl, csv, "--out", out, "--redact-pii", "--dedup", "exact")
    assert code == 0
    assert out.read_text(encoding="utf-8").split("\n\n")[1:] == [DOCS[1], DOCS[2] + "\n"]


@pytest.mark.parametrize(
    "case, words",
    [
        ("empty", ["empty"]),
        ("missing", ["not found"]),
        ("threshold", ["threshold", "(0, 1]"]),
        ("zero", ["threshold"]),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, corpus, capsys, case, words):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    source = {"empty": empty, "missing": tmp_path / "nope.txt"}.get(case, corpus)
    threshold = {"threshold": "1.5", "zero": "0"}.get(case, "0.8")
    out = tmp_path / "out" / "clean.txt"
    flags = ["--dedup", "near", "--dedup-threshold", threshold]
    code, _, err = run(capsys, "clean", "--input", source, "--out", out, *flags)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lmforge: error:"), err
    assert all(w in lines[0] for w in words)
    assert not out.parent.exists()


def test_data_config_checks_the_fields():
    assert (DataConfig().redact_pii, DataConfig().dedup, DataConfig().dedup_threshold) == (False, "none", 0.8)
    with pytest.raises(LmforgeError, match="dedup_threshold"):
        DataConfig(dedup_threshold=1.2)
    with pytest.raises(LmforgeError, match="data.dedup must be one of"):
        DataConfig(dedup="fuzzy")


def test_prepare_cleans_records_counts_and_keys_the_cache(tmp_path, corpus, capsys):
    plain = ensure_prepared(corpus, "char", 0, 0.2, tmp_path / "cache", progress=False)
    cleaned = ensure_prepared(corpus, "char", 0, 0.2, tmp_path / "cache", progress=False, redact_pii=True, dedup="near")
    assert cleaned != plain and "cleaning" not in load_prepared(plain).meta
    data = load_prepared(cleaned)
    meta = data.meta["cleaning"]
    assert meta["pii"]["EMAIL"] == 1 and meta["dedup"]["exact_duplicates"] == meta["dedup"]["near_duplicates"] == 1
    text = data.tokenizer.decode(list(data.train) + list(data.val))
    assert SECRET not in text and "<EMAIL>" in text and DOCS[1] in text and DOCS[3] not in text
    again = ensure_prepared(corpus, "char", 0, 0.2, tmp_path / "cache", progress=False, redact_pii=True, dedup="near")
    assert again == cleaned
    other = ensure_prepared(
        corpus, "char", 0, 0.2, tmp_path / "cache", progress=False, redact_pii=True, dedup="near", dedup_threshold=0.9
    )
    assert other not in (cleaned, plain)

    out = tmp_path / "docs"
    code, _, _ = run(
        capsys, "data", "prepare", "--input", corpus, "--out", out, "--documents", "--redact-pii", "--dedup", "exact",
        "--val-fraction", "0.2", "--no-progress",
    )  # fmt: skip
    assert code == 0
    docs = load_documents(out)
    assert docs.meta["cleaning"]["dedup"]["exact_duplicates"] == 1
    assert docs.train.n_documents + docs.val.n_documents == 4
