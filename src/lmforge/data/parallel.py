"""Parallel text for sequence-to-sequence training: sentence pairs from line-aligned files (train.de / train.en, the
layout of Multi30k and WMT releases) or from one TSV / JSONL file with a source and a target column.

Every mistake is one LmforgeError naming the file (both files, for aligned ones) and the line. prepare_parallel
tokenizes them once with one tokenizer trained on both sides, into a cached folder a resumed run reads again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.atomic import TMP, fsync_dir
from lmforge.data.prepare import _sha256, resolve_tokenizer, train_tokenizer
from lmforge.data.records import iter_csv, iter_jsonl, read_utf8
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

FORMAT = 1  # bump when the prepared layout changes

SPLITS = ("train", "val")


@dataclass
class Pairs:
    """Source and target sentences of one split, index-aligned; `where` names the file(s) for errors."""

    source: list[str]
    target: list[str]
    where: str


def read_lines(path: Path) -> list[str]:
    """A text file's lines, without their line ends (the last newline ends a line, it does not start one)."""
    text = read_utf8(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_aligned(source: Path, target: Path) -> Pairs:
    """Line i of source is translated by line i of target; a count mismatch, an empty file, or a line empty on one
    side only (an alignment slip) is an error naming both files."""
    src, tgt = read_lines(source), read_lines(target)
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


@dataclass
class TokenPairs:
    """A split's sentence pairs as token ids (each ending with eos), flat with offsets: pair i's source is
    source[source_offsets[i]:source_offsets[i + 1]]."""

    source: np.ndarray
    source_offsets: np.ndarray
    target: np.ndarray
    target_offsets: np.ndarray

    @classmethod
    def of(cls, source: list[list[int]], target: list[list[int]]) -> TokenPairs:
        def flat(rows):
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            offsets[1:] = np.cumsum([len(r) for r in rows])
            return np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(offsets[-1])), offsets

        return cls(*flat(source), *flat(target))

    def __len__(self) -> int:
        return len(self.source_offsets) - 1

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return np.diff(self.source_offsets), np.diff(self.target_offsets)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, t = self.source_offsets, self.target_offsets
        return self.source[s[i] : s[i + 1]], self.target[t[i] : t[i + 1]]


@dataclass
class ParallelData:
    """What prepare_parallel gives a training run: its folder, the shared tokenizer, the splits and their sizes."""

    path: Path
    tokenizer: Tokenizer
    train: TokenPairs
    val: TokenPairs | None
    meta: dict


def _encode_split(pairs: Pairs, tokenizer: Tokenizer, eos_id: int, max_len: int, drop_long: bool):
    """Token ids of both sides; a training pair longer than max_len on a side is left out (drop_long), a validation
    pair is cut, so validation covers every pair. Returns the split and how many pairs were dropped or cut."""
    source, cut_source = encode_sentences(tokenizer, pairs.source, eos_id, max_len if not drop_long else 1 << 30)
    target, cut_target = encode_sentences(tokenizer, pairs.target, eos_id, max_len if not drop_long else 1 << 30)
    if not drop_long:
        return TokenPairs.of(source, target), max(cut_source, cut_target)
    kept = [i for i in range(len(source)) if len(source[i]) <= max_len and len(target[i]) <= max_len]
    return TokenPairs.of([source[i] for i in kept], [target[i] for i in kept]), len(source) - len(kept)


def special_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """The pad and end-of-sequence ids an encoder-decoder needs from its tokenizer."""
    pad, eos = tokenizer.special_id("pad"), tokenizer.special_id("sep")
    if pad is None or eos is None:
        raise LmforgeError(
            f"the {tokenizer.kind} tokenizer has no pad or end token (<pad>, </s>) for an encoder-decoder: use "
            "data.tokenizer bpe or wordpiece, or a tokenizer.json that has them"
        )
    return pad, eos


def prepare_parallel(
    path: str | Path,
    source: str,
    target: str,
    tokenizer: str | Path,
    vocab_size: int,
    max_len: int,
    cache_dir: str | Path,
    progress: bool = True,
    started_with: str | None = None,
) -> ParallelData:
    """The splits of read_parallel tokenized with `tokenizer` (bpe or wordpiece: trained on the training pairs' both
    sides; or a tokenizer.json), cached in cache_dir under a key of the files' contents and the settings, and read
    back from there while they hold. A resumed run passes its checkpoint's tokenizer.json and, as started_with, the
    setting it started with, whose folder is reused when it holds that very tokenizer."""
    path = Path(path)
    if not path.exists():
        raise LmforgeError(
            f"{path} not found: give a directory of train.{source}/train.{target} files or a .tsv/.jsonl"
        )
    files = sorted(p for p in (path.iterdir() if path.is_dir() else [path]) if p.is_file())
    contents = [_sha256(p) for p in files if path.is_file() or p.name.startswith(("train.", "val."))]

    def folder(spec: str | Path) -> Path:
        key = spec if spec in ("bpe", "wordpiece", "unigram") else "file:" + _sha256(Path(spec))
        settings = [FORMAT, contents, source, target, key, vocab_size, max_len]
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
        return Path(cache_dir) / f"{path.stem}-{source}-{target}-{digest}"

    if started_with is not None and (folder(started_with) / "meta.json").is_file():
        first = folder(started_with)
        if _sha256(first / "tokenizer.json") == _sha256(Path(tokenizer)):
            return _load_parallel(first)
    out = folder(tokenizer)
    if (out / "meta.json").is_file():
        return _load_parallel(out)
    splits = read_parallel(path, source, target)
    spec = resolve_tokenizer(tokenizer)
    if isinstance(spec, str):
        if spec == "char":
            raise LmforgeError("data.tokenizer = char has no pad or end token for an encoder-decoder: use bpe")
        train = splits["train"]
        spec = train_tokenizer(spec, train.source + train.target, vocab_size, progress, encoder=True)
    pad, eos = special_ids(spec)
    encoded, dropped = {}, {}
    for name, pairs in splits.items():
        encoded[name], dropped[name] = _encode_split(pairs, spec, eos, max_len, drop_long=name == "train")
    if len(encoded["train"]) == 0:
        raise LmforgeError(f"every training pair of {path} is longer than {max_len} tokens: raise model.max_seq_len")
    meta = {
        "format": FORMAT, "source": source, "target": target, "files": [str(p) for p in files],
        "n_train_pairs": len(encoded["train"]), "n_val_pairs": len(encoded["val"]) if "val" in encoded else 0,
        "n_train_tokens": int(len(encoded["train"].source) + len(encoded["train"].target)),
        "dropped_long_train_pairs": dropped["train"], "cut_long_val_pairs": dropped.get("val", 0),
        "max_len": max_len, "pad_id": pad, "eos_id": eos,
    }  # fmt: skip
    _save_parallel(out, spec, encoded, meta)
    return _load_parallel(out)


def _save_parallel(out: Path, tokenizer: Tokenizer, splits: dict[str, TokenPairs], meta: dict) -> None:
    """Writes the folder under a temporary name and renames it: a crash leaves no half-prepared data."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{TMP}{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tokenizer.save(tmp / "tokenizer.json")
        for name, pairs in splits.items():
            np.savez(tmp / f"{name}.npz", **vars(pairs))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_parallel(folder: Path) -> ParallelData:
    def split(name: str) -> TokenPairs | None:
        if not (folder / f"{name}.npz").is_file():
            return None
        with np.load(folder / f"{name}.npz", allow_pickle=False) as arrays:
            return TokenPairs(**{k: arrays[k] for k in arrays.files})

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    return ParallelData(folder, Tokenizer.load(folder / "tokenizer.json"), split("train"), split("val"), meta)
