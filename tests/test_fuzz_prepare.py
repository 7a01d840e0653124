"""Hostile data: random bytes, truncated files, mixed encodings, NUL bytes and malformed JSONL/CSV records. Data
preparation gives prepared data or an LmforgeError; bad records are skipped and counted, or named by line number."""

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmforge.data import PreparedData, load_prepared, prepare
from lmforge.errors import LmforgeError

FUZZ = settings(max_examples=25, deadline=None)
PADDING = "a long enough first document, so that the data is never too small to split. " * 3
BAD_JSONL = [b"\xff{}", b'{"text": "cut', b"[1, 2]", b'{"txt": "a"}', b'{"text": 5}', b'{"text": "a\x00b"}',
             b'{"text": "\\udc00"}', b"\x00\x00\x00"]  # fmt: skip


def has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def good(line: bytes) -> bool:
    """The oracle: a JSON object with a string "text" that UTF-8 can hold."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("text"), str) and not has_surrogate(record["text"])


def prepared_or_error(tmp: Path, path: Path, on_bad_line: str):
    try:
        return load_prepared(prepare([path], "char", tmp / "out", progress=False, on_bad_line=on_bad_line))
    except LmforgeError as e:
        return e


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".txt", ".jsonl", ".csv"]))
@example(b"\x01", ".txt")  # only control characters: nothing left after cleaning
@example(b'"', ".csv")  # a header cut inside its quotes
def test_random_bytes_prepare_or_fail_clearly(tmp_path_factory, raw, suffix):
    tmp = tmp_path_factory.mktemp("raw")
    (tmp / f"in{suffix}").write_bytes(raw)
    for policy in ("error", "skip"):
        assert isinstance(prepared_or_error(tmp, tmp / f"in{suffix}", policy), (LmforgeError, PreparedData))


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from(BAD_JSONL)), max_size=12), st.floats(0.5, 1))
def test_jsonl_bad_lines_are_counted_or_named(tmp_path_factory, lines, keep):
    tmp = tmp_path_factory.mktemp("jsonl")
    encoded = [json.dumps({"text": PADDING}).encode()]
    encoded += [json.dumps({"text": x}).encode() if isinstance(x, str) else x for x in lines]
    raw = b"\n".join(encoded)
    raw = raw[: max(len(encoded[0]) + 1, int(len(raw) * keep))]  # truncated, maybe mid-record
    path = tmp / "docs.jsonl"
    path.write_bytes(raw)
    bad = [number for number, line in enumerate(raw.split(b"\n"), start=1) if line.strip() and not good(line)]
    n_bad, first_bad = len(bad), (bad or [0])[0]
    skipped = prepared_or_error(tmp, path, "skip")
    assert skipped.meta["sources"][0]["skipped_lines"] == n_bad
    strict = prepared_or_error(tmp, path, "error")
    if n_bad:
        assert isinstance(strict, LmforgeError) and f"line {first_bad}:" in str(strict), (raw, str(strict))
    else:
        assert strict.meta["n_train_tokens"] == skipped.meta["n_train_tokens"]


@FUZZ
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(["x,y", "\x00", "\udcff"])), max_size=10))
def test_csv_bad_rows_are_counted(tmp_path_factory, texts):
    tmp = tmp_path_factory.mktemp("csv")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerows([["id", "text"], [0, PADDING]])
    for i, text in enumerate(texts):
        writer.writerow([i, text] if text != "x,y" else [i, "x", "y"])  # a row with a field too many
    path = tmp / "docs.csv"
    path.write_bytes(buffer.getvalue().encode("utf-8", errors="surrogateescape"))
    skipped = prepared_or_error(tmp, path, "skip")
    assert skipped.meta["sources"][0]["skipped_lines"] == sum(
        t == "x,y" or "\x00" in t or has_surrogate(t) for t in texts
    )


@pytest.mark.parametrize(
    "raw, match",
    [(PADDING.encode() + "café".encode("latin-1") + b"\n", r"byte 0xe9 at offset \d+, line 1"),
     ((PADDING + "\nnaïve\n").encode("utf-8") + "naïve".encode("latin-1"), "line 3"),
     ((PADDING + "中文").encode("utf-8")[:-1], "not valid UTF-8"), (PADDING.encode() + b"\x00", "NUL"),
     ("text".encode("utf-16"), "NUL|UTF-8"), (b"", "empty")],
)  # fmt: skip
def test_text_files_truncated_mixed_or_binary_are_rejected(tmp_path, raw, match):
    (tmp_path / "in.txt").write_bytes(raw)
    with pytest.raises(LmforgeError, match=match):
        prepare([tmp_path / "in.txt"], "char", tmp_path / "out", progress=False)
