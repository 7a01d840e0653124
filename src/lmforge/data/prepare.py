"""Text files -> one folder of packed tokens: train.bin and val.bin (raw numpy arrays), meta.json, tokenizer.json.

The folder appears whole or not at all: it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.data.clean import clean_text
from lmforge.data.records import is_records, read_records
from lmforge.errors import LmforgeError
from lmforge.tokenizer import ENCODER_BPE_SPECIALS, EOS, Tokenizer

FORMAT = 1
CHUNK_CHARS = 1 << 20  # pieces of ~1 MB are encoded in parallel


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (a leading BOM dropped), refusing what would train a model on garbage."""
    path = Path(path)
    if path.is_dir():
        raise LmforgeError(f"data file {path} is a directory: give a UTF-8 text file")
    if not path.exists():
        raise LmforgeError(f"data file {path} not found: check the path (relative paths start at {Path.cwd()})")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LmforgeError(f"cannot read data file {path}: {e.strerror}") from None
    if b"\0" in raw:
        raise LmforgeError(
            f"data file {path} is binary (it contains NUL bytes, as UTF-16 text does too): convert it to UTF-8 text"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1  # mixed encodings: say where the first foreign byte is
        raise LmforgeError(
            f"data file {path} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}): "
            "convert it to UTF-8 text, e.g. with iconv -f latin1 -t utf-8"
        ) from None
    if not text or text.isspace():
        raise LmforgeError(f"data file {path} is empty{' (only whitespace)' if text else ''}: give a file with text")
    return text


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves the files while every id fits in it (ids < 65536), as in nanoGPT."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Pieces of about `size` characters that end at a newline when the piece has one."""
    start = 0
    while start < len(text):
        end = start + size
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end


def _encode(tokenizer: Tokenizer, text: str, dtype: np.dtype, bar: tqdm) -> list[np.ndarray]:
    """Token ids of `text`, encoded a few chunks per core at a time so the progress bar moves."""
    parts, chunks = [], _chunks(text)
    while batch := list(itertools.islice(chunks, 2 * (os.cpu_count() or 1))):
        parts += [np.array(ids, dtype=dtype) for ids in tokenizer.encode_batch(batch)]
        bar.update(sum(map(len, batch)))
    return parts


TRAINED = ("char", "bpe", "wordpiece")  # the tokenizers trained on the data itself


def resolve_tokenizer(tokenizer: str | Path | Tokenizer) -> Tokenizer | str:
    """A Tokenizer ready to use, or "char" / "bpe" / "wordpiece" for one still to be trained on the data."""
    if isinstance(tokenizer, Tokenizer) or tokenizer in TRAINED:
        return tokenizer
    if not Path(tokenizer).is_file():
        raise LmforgeError(
            f"tokenizer {str(tokenizer)!r} is neither char, bpe nor wordpiece, nor an existing tokenizer.json file"
        )
    return Tokenizer.load(tokenizer)


def train_tokenizer(
    kind: str,
    texts: list[str],
    vocab_size: int,
    progress: bool,
    lowercase: bool = True,
    strip_accents: bool = True,
    encoder: bool = False,
) -> Tokenizer:
    """A tokenizer of the named kind trained on the cleaned texts; an encoder's byte-level BPE gets RoBERTa's
    special tokens instead of <|endoftext|>."""
    if kind == "char":
        return Tokenizer.train_char(texts)
    chunks = (c for t in texts for c in _chunks(t))
    if kind == "bpe":
        return Tokenizer.train_bpe(chunks, vocab_size, progress, ENCODER_BPE_SPECIALS if encoder else (EOS,))
    return Tokenizer.train_wordpiece(chunks, vocab_size, lowercase, strip_accents, progress)


def input_list(inputs: Sequence[str | Path] | str | Path) -> list[str | Path]:
    """One path or several, as a list; none at all is a mistake."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not inputs:
        raise LmforgeError("no data files given: pass at least one UTF-8 text file")
    return inputs


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise LmforgeError(f"{out_dir} is a file: give a folder for the prepared data")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "meta.json").is_file():
        raise LmforgeError(f"{out_dir} is a non-empty folder that is not prepared data: give a new or empty folder")


def prepare(
    inputs: Sequence[str | Path],
    tokenizer: str | Path | Tokenizer,
    out_dir: str | Path,
    vocab_size: int = 8192,
    val_fraction: float = 0.1,
    progress: bool = True,
    lowercase: bool = True,
    strip_accents: bool = True,
    on_bad_line: str = "error",
) -> Path:
    """Cleans and tokenizes the files (joined by <|endoftext|> when the tokenizer has it) into a prepared folder.

    `tokenizer` is "char", "bpe" or "wordpiece" (trained here on the cleaned text; vocab_size is for bpe and wordpiece,
    lowercase and strip_accents for wordpiece), a tokenizer.json path or a Tokenizer. The last val_fraction of the
    token stream is the validation split, as in nanoGPT. A .jsonl or .csv file holds one document per record (its
    "text"); on_bad_line says what a malformed record does: "error" stops with its line number, "skip" skips and
    counts it.
    """
    inputs = input_list(inputs)
    if not 0 <= val_fraction < 1:
        raise LmforgeError(f"val_fraction = {val_fraction} is out of range: a fraction in [0, 1)")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    tok = resolve_tokenizer(tokenizer)
    texts, records = [], []
    for p in inputs:
        docs, bad = read_records(p, on_bad_line) if is_records(p) else ([read_text(p)], None)
        texts += [clean_text(d) for d in docs]
        records.append(None if bad is None else {"records": len(docs), "skipped_lines": bad})
        if bad:
            print(f"{p}: skipped {bad} malformed line{'s' * (bad > 1)}", file=sys.stderr)
    if isinstance(tok, str):
        tok = train_tokenizer(tok, texts, vocab_size, progress, lowercase, strip_accents)

    tokens = _tokenize(tok, texts, progress)
    n_train = int(len(tokens) * (1 - val_fraction))
    train, val = tokens[:n_train], tokens[n_train:]
    if (val_fraction > 0 and len(val) < 2) or len(train) < 2:
        raise LmforgeError(
            f"the data is too small: {len(tokens)} tokens give {len(train)} train and {len(val)} val tokens "
            "(train needs 2, and val 2 unless val_fraction is 0); use more text or change data.val_fraction"
        )

    meta = {
        "n_train_tokens": len(train),
        "n_val_tokens": len(val),
        **base_meta(tok, tokens.dtype, inputs, val_fraction),
    }
    for source, counts in zip(meta["sources"], records, strict=True):
        source.update(counts or {})
    write_folder(out_dir, {"train.bin": train, "val.bin": val}, tok, meta)
    return out_dir


def base_meta(tok: Tokenizer, dtype: np.dtype, inputs: Sequence[str | Path], val_fraction: float) -> dict:
    """The meta.json entries every prepared layout has: the tokenizer, the token dtype and the sources."""
    sources = [
        {"path": str(Path(p).resolve()), "sha256": _sha256(Path(p)), "bytes": Path(p).stat().st_size} for p in inputs
    ]
    return {
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "tokenizer": "tokenizer.json",
        "tokenizer_kind": tok.kind,
        "sources": sources,
        "val_fraction": val_fraction,
        "format": FORMAT,
    }


def _tokenize(tok: Tokenizer, texts: list[str], progress: bool) -> np.ndarray:
    """One token stream, with <|endoftext|> between the texts when the tokenizer has it."""
    dtype, parts = token_dtype(tok.vocab_size), []
    with tqdm(total=sum(map(len, texts)), desc="tokenizing", unit="char", unit_scale=True, disable=not progress) as bar:
        for i, text in enumerate(texts):
            if i and tok.eos_id is not None:
                parts.append(np.array([tok.eos_id], dtype=dtype))
            parts += _encode(tok, text, dtype, bar)
    return np.concatenate(parts) if parts else np.empty(0, dtype)  # nothing left after cleaning: too small, below


def write_folder(out_dir: Path, arrays: dict[str, np.ndarray], tok: Tokenizer, meta: dict) -> None:
    """Fills a temporary sibling folder and renames it onto out_dir; on any failure the sibling is removed.

    A name ending in .npy is written with its dtype and shape (np.save); others as raw bytes, described in meta.
    """
    out_dir = out_dir.resolve()  # so that "." has a name to put the sibling next to
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for name, array in arrays.items():
            if name.endswith(".npy"):
                np.save(tmp / name, array)
            else:
                array.tofile(tmp / name)
        tok.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Renames the finished folder onto out_dir; an older prepared folder there is moved aside, then deleted."""
    if not (out_dir / "meta.json").is_file():
        os.replace(tmp, out_dir)  # out_dir is absent or an empty folder
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old)


@dataclass
class PreparedData:
    """A prepared folder opened for training: the splits are read-only memmaps, so nothing is loaded up front."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    tokenizer: Tokenizer
    path: Path


def load_prepared(path: str | Path) -> PreparedData:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise LmforgeError(f"{path} is not prepared data (no meta.json): run `lmforge data prepare` on a text file")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        counts = {split: int(meta[f"n_{split}_tokens"]) for split in ("train", "val")}
        tokenizer_file = path / meta["tokenizer"]
    except (ValueError, KeyError, TypeError) as e:
        raise LmforgeError(f"{meta_file} is damaged ({type(e).__name__}: {e}): prepare the data again") from None
    if meta.get("format") != FORMAT:
        raise LmforgeError(
            f"{path} has data format {meta.get('format')}, this lmforge reads {FORMAT}: prepare it again"
        )
    splits = {}
    for split, n in counts.items():
        file = path / f"{split}.bin"
        if not file.is_file():
            raise LmforgeError(f"{file} is missing: prepare the data again")
        size = file.stat().st_size
        if size != n * dtype.itemsize:
            raise LmforgeError(
                f"{file} has {size} bytes but meta.json says {n} {dtype.name} tokens ({n * dtype.itemsize} bytes): "
                "prepare the data again"
            )
        splits[split] = np.memmap(file, dtype=dtype, mode="r") if n else np.empty(0, dtype=dtype)  # mmap needs bytes
    return PreparedData(splits["train"], splits["val"], meta, Tokenizer.load(tokenizer_file), path)


def ensure_prepared(
    data: str | Path,
    tokenizer: str,
    vocab_size: int,
    val_fraction: float,
    cache_dir: str | Path,
    progress: bool = True,
    lowercase: bool = True,
    strip_accents: bool = True,
    builder: Callable[..., Path] = prepare,
    on_bad_line: str = "error",
) -> Path:
    """A prepared folder as it is, or a text file prepared once into cache_dir and reused while file and settings hold.

    The cache key hashes the file's contents (not its name or mtime), the tokenizer (a tokenizer.json by its contents)
    and the settings that change the tokens. builder is the preparation (`prepare`, or `prepare_documents` for an
    encoder's documents), called as builder([data], tokenizer, out_dir, vocab_size, val_fraction, progress, ...).
    """
    data = Path(data)
    if (data / "meta.json").is_file():
        return data
    if data.is_dir():
        raise LmforgeError(
            f"{data} is a folder but not prepared data (no meta.json): run `lmforge data prepare` or pass a text file"
        )
    if not data.exists():
        raise LmforgeError(f"data file {data} not found: check the path (relative paths start at {Path.cwd()})")
    spec = resolve_tokenizer(tokenizer)
    tokenizer_key = spec if isinstance(spec, str) else "file:" + _sha256(Path(tokenizer))
    settings = [
        FORMAT,
        _sha256(data),
        tokenizer_key,
        vocab_size if spec in ("bpe", "wordpiece") else None,
        val_fraction,
    ]
    if spec == "wordpiece":
        settings += [lowercase, strip_accents]
    if builder is not prepare:
        settings.append(builder.__name__)
    extra = {"on_bad_line": on_bad_line} if builder is prepare and is_records(data) else {}
    settings += list(extra.values())
    out_dir = Path(cache_dir) / f"{data.stem}-{hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]}"
    if (out_dir / "meta.json").is_file():
        return out_dir
    return builder([data], spec, out_dir, vocab_size, val_fraction, progress, lowercase, strip_accents, **extra)
