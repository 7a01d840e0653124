"""Text files -> one prepared folder of packed tokens: the text read and cleaned, the tokenizer resolved or trained,
the stream tokenized and split; prepared_folder.py writes the folder. ensure_prepared caches a text file's folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.atomic import check_output_dir
from lmforge.data.clean import BLANK_LINE, clean_documents, clean_text
from lmforge.data.dedup import check_dedup
from lmforge.data.prepared_folder import FORMAT, check_out_dir, token_dtype, write_folder
from lmforge.data.records import check_data_file, is_records, read_records
from lmforge.errors import LmforgeError
from lmforge.tokenizer import ENCODER_BPE_SPECIALS, EOS, Tokenizer, check_vocab_size, min_vocab_size

CHUNK_CHARS = 1 << 20  # pieces of ~1 MB are encoded in parallel


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (a leading BOM dropped), refusing what would train a model on garbage."""
    path = Path(path)
    check_data_file(path)
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


TRAINED = ("char", "bpe", "wordpiece", "unigram")  # the tokenizers trained on the data itself


def resolve_tokenizer(tokenizer: str | Path | Tokenizer) -> Tokenizer | str:
    """A Tokenizer ready to use, or "char" / "bpe" / "wordpiece" for one still to be trained on the data."""
    if isinstance(tokenizer, Tokenizer) or tokenizer in TRAINED:
        return tokenizer
    if not Path(tokenizer).is_file():
        raise LmforgeError(
            f"tokenizer {str(tokenizer)!r} is neither char, bpe, wordpiece nor unigram, nor an existing tokenizer.json "
            "file"
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
    if kind == "unigram":
        return Tokenizer.train_unigram(chunks, vocab_size, progress, encoder)
    return Tokenizer.train_wordpiece(chunks, vocab_size, lowercase, strip_accents, progress)


def input_list(inputs: Sequence[str | Path] | str | Path) -> list[str | Path]:
    """One path or several, as a list; none at all is a mistake."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not inputs:
        raise LmforgeError("no data files given: pass at least one UTF-8 text file")
    return inputs


def check_trained_vocab_size(tokenizer: Tokenizer | str, vocab_size: int, encoder: bool = False) -> None:
    """A vocab_size the tokenizer still to be trained cannot have is refused now, not after reading all the data."""
    if tokenizer in ("bpe", "wordpiece", "unigram"):
        check_vocab_size(tokenizer, vocab_size, min_vocab_size(tokenizer, encoder))


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
    redact_pii: bool = False,
    dedup: str = "none",
    dedup_threshold: float = 0.8,
) -> Path:
    """Cleans and tokenizes the files (joined by <|endoftext|> when the tokenizer has it) into a prepared folder.

    `tokenizer` is "char", "bpe" or "wordpiece" (trained here on the cleaned text; vocab_size is for bpe and wordpiece,
    lowercase and strip_accents for wordpiece), a tokenizer.json path or a Tokenizer. The last val_fraction of the
    token stream is the validation split, as in nanoGPT. A .jsonl or .csv file holds one document per record (its
    "text"); on_bad_line says what a malformed record does: "error" stops with its line number, "skip" skips and
    counts it. redact_pii, dedup and dedup_threshold are privacy-aware cleaning (clean_documents): to remove its
    duplicates, a text file is split into documents at blank lines, and the ones kept are joined by a blank line.
    """
    inputs = input_list(inputs)
    check_dedup(dedup, dedup_threshold)
    if not 0 <= val_fraction < 1:
        raise LmforgeError(f"val_fraction = {val_fraction} is out of range: a fraction in [0, 1)")
    out_dir = Path(out_dir)
    for source in inputs:
        check_output_dir(out_dir, {"--input": source})
    check_out_dir(out_dir)
    tok = resolve_tokenizer(tokenizer)
    check_trained_vocab_size(tok, vocab_size)
    texts, records, owner = [], [], []  # owner[i]: the text that document i is part of
    for p in inputs:
        docs, bad = read_records(p, on_bad_line) if is_records(p) else ([read_text(p)], None)
        for doc in map(clean_text, docs):
            parts = [d for d in BLANK_LINE.split(doc) if d.strip()] if dedup != "none" and bad is None else [doc]
            owner += [len(texts)] * len(parts)
            texts.append(parts)
        records.append(None if bad is None else {"records": len(docs), "skipped_lines": bad})
        if bad:
            print(f"{p}: skipped {bad} malformed line{'s' * (bad > 1)}", file=sys.stderr)
    cleaning = None
    if redact_pii or dedup != "none":
        documents = [d for parts in texts for d in parts]
        kept, documents, cleaning = clean_documents(documents, redact_pii, dedup, dedup_threshold, progress)
        grouped: list[list[str]] = [[] for _ in texts]
        for i in kept:
            grouped[owner[i]].append(documents[i])
        texts = ["\n\n".join(g) for g in grouped if g]
        cleaning["dedup"].pop("examples", None)  # meta.json keeps the counts only
    else:
        texts = [parts[0] for parts in texts]
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
    if cleaning is not None:
        meta["cleaning"] = cleaning
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
    started_with: str | None = None,
    redact_pii: bool = False,
    dedup: str = "none",
    dedup_threshold: float = 0.8,
) -> Path:
    """A prepared folder as it is, or a text file prepared once into cache_dir and reused while file and settings hold.

    The cache key hashes the file's contents (not its name or mtime), the tokenizer (a tokenizer.json by its contents)
    and the settings that change the tokens. builder is the preparation (`prepare`, or `prepare_documents` for an
    encoder's documents), called as builder([data], tokenizer, out_dir, vocab_size, val_fraction, progress, ...).
    started_with: when tokenizer is a resumed run's tokenizer.json, the tokenizer setting the run started with; the
    folder that setting gave is reused when its tokenizer is that very file, so the text is not tokenized again.
    redact_pii, dedup and dedup_threshold (privacy-aware cleaning) join the key when they are not the defaults, so a
    folder prepared without them is still found, and a changed option prepares again.
    """
    data = Path(data)
    if (data / "meta.json").is_file():
        return data
    if data.is_dir():
        raise LmforgeError(
            f"{data} is a folder but not prepared data (no meta.json): run `lmforge data prepare` or pass a text file"
        )
    check_data_file(data)  # before hashing it: /dev/zero never ends, and a pipe would be empty when read after
    spec = resolve_tokenizer(tokenizer)
    extra = {"on_bad_line": on_bad_line} if builder is prepare and is_records(data) else {}
    cleaning: dict = {"redact_pii": True} if redact_pii else {}
    if dedup != "none":
        cleaning.update(dedup=dedup, dedup_threshold=dedup_threshold if dedup == "near" else 0.8)
    source = _sha256(data)

    def cached(spec_name: str | Tokenizer, tokenizer_file: str | Path) -> Path:
        tokenizer_key = spec_name if isinstance(spec_name, str) else "file:" + _sha256(Path(tokenizer_file))
        settings = [FORMAT, source, tokenizer_key, vocab_size if spec_name in ("bpe", "wordpiece", "unigram") else None]
        settings.append(val_fraction)
        if spec_name == "wordpiece":
            settings += [lowercase, strip_accents]
        if builder is not prepare:
            settings.append(builder.__name__)
        settings += list(extra.values())
        if cleaning:
            settings.append(sorted(cleaning.items()))
        return Path(cache_dir) / f"{data.stem}-{hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]}"

    if started_with is not None:
        first = cached(resolve_tokenizer(started_with), started_with)
        if (first / "meta.json").is_file() and _sha256(first / "tokenizer.json") == _sha256(Path(tokenizer)):
            return first
    out_dir = cached(spec, tokenizer)
    if (out_dir / "meta.json").is_file():
        return out_dir
    return builder(
        [data], spec, out_dir, vocab_size, val_fraction, progress, lowercase, strip_accents, **extra, **cleaning
    )
