"""Parallel text: aligned files and pair files read into the same sentence pairs; misalignment named with both files."""

import json
from pathlib import Path

import pytest

from lmforge.data.parallel import read_parallel
from lmforge.errors import LmforgeError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "translation"


def write(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_aligned_files_tsv_and_jsonl_give_the_same_pairs(tmp_path):
    de, en = ["Ein Hund läuft.", "Zwei Männer."], ["A dog runs.", "Two men."]
    write(tmp_path, "train.de", de), write(tmp_path, "train.en", en)
    write(tmp_path, "val.de", de[:1]), write(tmp_path, "val.en", en[:1])
    splits = read_parallel(tmp_path, "de", "en")
    assert (splits["train"].source, splits["train"].target) == (de, en)
    assert splits["val"].source == de[:1]
    tsv = write(tmp_path, "p.tsv", ["de\ten", *(f"{a}\t{b}" for a, b in zip(de, en, strict=True))])
    jsonl = write(tmp_path, "p.jsonl", [json.dumps({"de": a, "en": b}) for a, b in zip(de, en, strict=True)])
    for path in (tsv, jsonl):
        pairs = read_parallel(path, "de", "en")["train"]
        assert (pairs.source, pairs.target) == (de, en)
    assert read_parallel(tmp_path, "en", "de")["train"].source == en  # the direction is the caller's


@pytest.mark.parametrize(
    "de, en, message",
    [
        (["a", "b"], ["x"], r"train\.de and .*train\.en are not line-aligned: 2 lines against 1"),
        ([], ["x"], r"train\.de is empty"),
        (["a", "", "c"], ["x", "y", "z"], r"train\.de, line 2: empty where the other side has text"),
    ],
)
def test_misaligned_files_are_named_both(tmp_path, de, en, message):
    write(tmp_path, "train.de", de), write(tmp_path, "train.en", en)
    with pytest.raises(LmforgeError, match=message):
        read_parallel(tmp_path, "de", "en")


def test_missing_side_bad_columns_and_empty_cells_are_one_line(tmp_path):
    write(tmp_path, "train.de", ["a"])
    with pytest.raises(LmforgeError, match=r"train\.en not found"):
        read_parallel(tmp_path, "de", "en")
    tsv = write(tmp_path, "p.tsv", ["de\tfr", "a\tb"])
    with pytest.raises(LmforgeError, match="no column 'en'"):
        read_parallel(tsv, "de", "en")
    jsonl = write(tmp_path, "p.jsonl", [json.dumps({"de": "a", "en": " "})])
    with pytest.raises(LmforgeError, match=r"p\.jsonl, line 1: the en side is empty"):
        read_parallel(jsonl, "de", "en")
    with pytest.raises(LmforgeError, match="a .tsv or .jsonl file"):
        read_parallel(write(tmp_path, "p.txt", ["a"]), "de", "en")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/translation is not beside the repository")
def test_multi30k_reads_aligned():
    splits = read_parallel(SHARED, "de", "en")
    assert len(splits["train"].source) == len(splits["train"].target) > 1000
    assert len(splits["val"].source) > 100
