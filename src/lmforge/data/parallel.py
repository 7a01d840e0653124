"""Parallel text for sequence-to-sequence training: sentence pairs from line-aligned files (train.de / train.en, the
layout of Multi30k and WMT releases) or from one TSV / JSONL file with a source and a target column.

Every mistake is one LmforgeError naming the file (both files, for aligned ones) and the line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.data.records import iter_csv, iter_jsonl, read_utf8
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

SPLITS = ("train", "val")


@dataclass
class Pairs:
    """Source and target sentences of one split, index-aligned; `where` names the file(s) for errors."""

    source: list[str]
    target: list[str]
    where: str


def _lines(path: Path) -> list[str]:
    text = read_utf8(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_aligned(source: Path, target: Path) -> Pairs:
    """Line i of source is translated by line i of target; a count mismatch, an empty file, or a line empty on one
    side only (an alignment slip) is an error naming both files."""
    src, tgt = _lines(source), _lines(target)
    where = f"{source} and {target}"
    if not src or not tgt:
        empty = source if not src else target
        raise LmforgeError(f"{empty} is empty: parallel files hold one sentence a line on both sides ({where})")
    if len(src) != len(tgt):
        raise LmforgeError(
            f"{where} are not line-aligned: {len(src)} lines against {len(tgt)}; every source line needs its target"
        )
    for number, (a, b) in enumerate(zip(src, tgt, strict=True), start=1):
        if bool(a.strip()) != bool(b.strip()):
            empty = source if not a.strip() else target
            raise LmforgeError(f"{empty}, line {number}: empty where the other side has text ({where})")
    kept = [(a, b) for a, b in zip(src, tgt, strict=True) if a.strip()]
    return Pairs([a for a, _ in kept], [b for _, b in kept], where)


def read_pairs_file(path: Path, source: str, target: str) -> Pairs:
    """A .tsv (header row) or .jsonl file whose `source` and `target` columns hold the two sides."""
    pairs: list[tuple[str, str]] = []

    def fail(line: int, why: str) -> None:
        raise LmforgeError(f"{path}, line {line}: {why}")

    suffix = path.suffix.lower()
    if suffix == ".tsv":
        header, rows = iter_csv(path, fail, "\t")
        missing = [c for c in (source, target) if c not in (header or [])]
        if missing:
            raise LmforgeError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header or [])})")
        numbered = [(number, row[header.index(source)], row[header.index(target)]) for number, row in rows]
        lines, pairs = [n for n, _, _ in numbered], [(a, b) for _, a, b in numbered]
    elif suffix == ".jsonl":
        records = list(iter_jsonl(path, fail))
        for number, record in records:
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in (source, target)):
                fail(number, f'needs "{source}" and "{target}" strings')
        pairs = [(record[source], record[target]) for _, record in records]
        lines = [number for number, _ in records]
    else:
        raise LmforgeError(f"{path}: parallel data is a .tsv or .jsonl file, or a directory of line-aligned files")
    for number, (a, b) in zip(lines, pairs, strict=True):
        if not a.strip() or not b.strip():
            fail(number, f"the {source if not a.strip() else target} side is empty")
    if not pairs:
        raise LmforgeError(f"{path} holds no sentence pairs")
    return Pairs([a for a, _ in pairs], [b for _, b in pairs], str(path))


def read_parallel(path: str | Path, source: str, target: str) -> dict[str, Pairs]:
    """The splits of parallel data: a directory of SPLIT.SOURCE / SPLIT.TARGET files (train required, val when
    present), or one .tsv / .jsonl file of pairs (train only)."""
    path = Path(path)
    if not path.is_dir():
        return {"train": read_pairs_file(path, source, target)}
    splits = {}
    for split in SPLITS:
        a, b = path / f"{split}.{source}", path / f"{split}.{target}"
        if a.exists() or b.exists() or split == "train":
            for side in (a, b):
                if not side.is_file():
                    raise LmforgeError(
                        f"{side} not found: a parallel directory holds {split}.{source} and {split}.{target}"
                    )
            splits[split] = read_aligned(a, b)
    return splits


def encode_sentences(tokenizer: Tokenizer, texts: list[str], eos_id: int, max_len: int) -> tuple[list[list[int]], int]:
    """Each text's token ids followed by eos_id, as an encoder-decoder reads a source and writes a target; a text
    over max_len tokens (eos included) is cut to fit. Returns the ids and how many texts were cut."""
    ids = tokenizer.encode_batch(texts)
    cut = sum(len(x) >= max_len for x in ids)
    return [x[: max_len - 1] + [eos_id] for x in ids], cut
