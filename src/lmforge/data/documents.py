"""Text -> documents -> sentences -> tokens, kept apart so an encoder's pretraining can build sentence pairs.

A prepared folder holds, per split, the tokens of every sentence back to back ({split}.bin, as for a GPT) and two
offset arrays: {split}.sentences.npy (where each sentence starts in the tokens, plus the end) and
{split}.documents.npy (where each document starts in the sentences, plus the end).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.atomic import check_output_dir
from lmforge.data.clean import BLANK_LINE, clean_documents, clean_text
from lmforge.data.dedup import check_dedup
from lmforge.data.prepare import (
    base_meta,
    check_trained_vocab_size,
    input_list,
    read_text,
    resolve_tokenizer,
    train_tokenizer,
)
from lmforge.data.prepared_folder import PreparedData, check_out_dir, load_prepared, token_dtype, write_folder
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

LAYOUT = "documents"
# a sentence ends at a line break, after . ! ? and a space, or right after the CJK full stops 。！？
SENTENCE_END = re.compile(r"\n|(?<=[.!?])[ \t]+|(?<=[。！？])")
BATCH_SENTENCES = 10_000  # sentences encoded in parallel at a time


def read_documents(path: str | Path) -> list[str]:
    """The documents of a file: one per JSONL record's "text" for a .jsonl file, else blank-line separated."""
    text = clean_text(read_text(path))
    if Path(path).suffix != ".jsonl":
        return [doc for doc in BLANK_LINE.split(text) if doc.strip()]
    docs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}:{number}: not valid JSON ({e.msg}); write one object a line") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise LmforgeError(f'{path}:{number}: a record needs a "text" string, like {{"text": "..."}}')
        if record["text"].strip():
            docs.append(clean_text(record["text"]))
    return docs


def split_sentences(document: str) -> list[str]:
    """Sentences, simply: at line breaks and sentence punctuation (English and Chinese), stripped, none empty."""
    return [s.strip() for s in SENTENCE_END.split(document) if s.strip()]


@dataclass
class DocumentSplit:
    """One split: tokens, sentence offsets into the tokens, document offsets into the sentences."""

    tokens: np.ndarray  # (n_tokens,)
    sentences: np.ndarray  # (n_sentences + 1,) int64
    documents: np.ndarray  # (n_documents + 1,) int64

    @property
    def n_documents(self) -> int:
        return len(self.documents) - 1


@dataclass
class DocumentData:
    train: DocumentSplit
    val: DocumentSplit
    meta: dict
    tokenizer: Tokenizer
    path: Path


def _tokenize(tok: Tokenizer, docs: list[list[str]], progress: bool) -> DocumentSplit:
    """Encodes every sentence; a sentence after the first of its document keeps one leading space, so a byte-level
    BPE sees its first word as it would in running text."""
    texts = [s if i == 0 else " " + s for doc in docs for i, s in enumerate(doc)]
    dtype, parts = token_dtype(tok.vocab_size), []
    with tqdm(total=len(texts), desc="tokenizing", unit="sentence", disable=not progress) as bar:
        for start in range(0, len(texts), BATCH_SENTENCES):
            batch = tok.encode_batch(texts[start : start + BATCH_SENTENCES])
            parts += [np.array(ids, dtype=dtype) for ids in batch]
            bar.update(len(batch))
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    per_doc, first = [], 0  # sentences kept per document: one of only characters the tokenizer drops is not kept
    for doc in docs:
        per_doc.append(int((lengths[first : first + len(doc)] > 0).sum()))
        first += len(doc)
    return DocumentSplit(
        np.concatenate([p for p in parts if len(p)] or [np.zeros(0, dtype)]),
        np.concatenate([[0], np.cumsum(lengths[lengths > 0])]).astype(np.int64),
        np.concatenate([[0], np.cumsum([n for n in per_doc if n])]).astype(np.int64),
    )


def prepare_documents(
    inputs: Sequence[str | Path],
    tokenizer: str | Path | Tokenizer,
    out_dir: str | Path,
    vocab_size: int = 8192,
    val_fraction: float = 0.1,
    progress: bool = True,
    lowercase: bool = True,
    strip_accents: bool = True,
    redact_pii: bool = False,
    dedup: str = "none",
    dedup_threshold: float = 0.8,
) -> Path:
    """Splits the files into documents and sentences, trains or loads the tokenizer, and writes a prepared folder.

    The last val_fraction of the documents (at least one when val_fraction > 0) is the validation split; a trained
    byte-level BPE gets the encoder special tokens. redact_pii, dedup and dedup_threshold: clean_documents.
    """
    inputs = input_list(inputs)
    check_dedup(dedup, dedup_threshold)
    out_dir = Path(out_dir)
    for source in inputs:
        check_output_dir(out_dir, {"--input": source})
    check_out_dir(out_dir)
    tok = resolve_tokenizer(tokenizer)
    check_trained_vocab_size(tok, vocab_size, encoder=True)
    docs = [doc for path in inputs for doc in read_documents(path)]
    cleaning = None
    if redact_pii or dedup != "none":
        kept, docs, cleaning = clean_documents(docs, redact_pii, dedup, dedup_threshold, progress)
        docs = [docs[i] for i in kept]
        cleaning["dedup"].pop("examples", None)  # meta.json keeps the counts only
    if isinstance(tok, str):
        tok = train_tokenizer(tok, docs, vocab_size, progress, lowercase, strip_accents, encoder=True)
    sentences = [split_sentences(doc) for doc in docs]
    n_val = 0 if val_fraction == 0 else max(1, round(len(docs) * val_fraction))
    if len(docs) - n_val < 1:
        raise LmforgeError(
            f"the data has {len(docs)} document(s), too few for a training and a validation split: separate "
            "documents by blank lines (or give one JSONL record each), or set data.val_fraction=0"
        )
    splits = {"train": _tokenize(tok, sentences[: len(docs) - n_val], progress)}
    splits["val"] = _tokenize(tok, sentences[len(docs) - n_val :], progress)
    meta = {"layout": LAYOUT, **base_meta(tok, splits["train"].tokens.dtype, inputs, val_fraction)}
    if cleaning is not None:
        meta["cleaning"] = cleaning
    arrays = {}
    for name, split in splits.items():
        meta[f"n_{name}_tokens"] = len(split.tokens)
        meta[f"n_{name}_sentences"] = len(split.sentences) - 1
        meta[f"n_{name}_documents"] = split.n_documents
        arrays.update({f"{name}.bin": split.tokens, f"{name}.sentences.npy": split.sentences,
                       f"{name}.documents.npy": split.documents})  # fmt: skip
    write_folder(out_dir, arrays, tok, meta)
    return out_dir


def load_documents(path: str | Path) -> DocumentData:
    """A folder written by prepare_documents, its offsets checked against its tokens."""
    data: PreparedData = load_prepared(path)
    if data.meta.get("layout") != LAYOUT:
        raise LmforgeError(
            f"{data.path} holds one token stream (a GPT's data), not documents: pass the text file itself, "
            "or prepare it with `lmforge data prepare --documents`"
        )
    splits = {}
    for name, tokens in (("train", data.train), ("val", data.val)):
        try:
            sentences = np.load(data.path / f"{name}.sentences.npy", mmap_mode="r")
            documents = np.load(data.path / f"{name}.documents.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise LmforgeError(f"{data.path}: the {name} offsets are missing or damaged ({e}): prepare again") from None
        if sentences[-1] != len(tokens) or documents[-1] != len(sentences) - 1:
            raise LmforgeError(f"{data.path}: the {name} offsets do not match its tokens: prepare the data again")
        splits[name] = DocumentSplit(tokens, sentences, documents)
    return DocumentData(splits["train"], splits["val"], data.meta, data.tokenizer, data.path)
