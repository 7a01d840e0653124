"""Labelled examples for fine-tuning: CSV, TSV, JSONL and CoNLL readers, label discovery, and encoding to token ids
(with word-to-subword alignment for token classification) and padded batches.

Every mistake in a file (a missing column, an unknown label, a CoNLL line with the wrong number of columns, an
empty file) is one LmforgeError that names the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.records import iter_csv, iter_jsonl, read_bytes
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

IGNORE = -100  # label of a position the loss skips: padding, special tokens, a word's later subwords
TABLES = {".csv": ",", ".tsv": "\t"}
CONLL = (".conll", ".txt", ".iob", ".bio")
TEXT_COLUMNS = {"classification": ("text", "sentence"), "ner": ("tokens", "words")}
LABEL_COLUMNS = {"classification": ("label",), "ner": ("tags", "ner_tags", "labels")}


@dataclass
class Columns:
    """Which fields hold the text, the optional second text of a pair, and the label; None = the usual names."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None


@dataclass
class Example:
    """One input: a text (and maybe a second one) for classification, a list of words for NER; label(s) or None."""

    line: int
    text: str | list[str]
    pair: str | None = None
    label: str | list[str] | None = None


def _fail(path: Path, line: int, why: str) -> None:
    raise LmforgeError(f"{path}, line {line}: {why}")


def _pick(where: str, task: str, names: list[str], given: str | None, kind: str, required: bool) -> str | None:
    """The column to read: the one given (which must exist), else the first usual name present."""
    candidates = (given,) if given else (TEXT_COLUMNS if kind == "text" else LABEL_COLUMNS)[task]
    found = next((c for c in candidates if c in names), None)
    if found is None and required:
        flag = "--text-column" if kind == "text" else "--label-column"
        raise LmforgeError(
            f"{where}: no {kind} column {' or '.join(repr(c) for c in candidates)} (columns: {', '.join(names)}); "
            f"name the right one with {flag}"
        )
    return found


def _read_table(path: Path, task: str, columns: Columns, labelled: bool) -> list[Example]:
    header, rows = iter_csv(path, lambda line, why: _fail(path, line, why), TABLES[path.suffix.lower()])
    if not header:
        raise LmforgeError(f"{path} is empty: give a file with a header row and one example per row")
    text = _pick(str(path), task, header, columns.text, "text", True)
    pair = _pick(str(path), task, header, columns.text_pair, "text", True) if columns.text_pair else None
    label = _pick(str(path), task, header, columns.label, "label", labelled)
    return [
        Example(line, row[header.index(text)], pair and row[header.index(pair)], label and row[header.index(label)])
        for line, row in rows
    ]


def _read_jsonl(path: Path, task: str, columns: Columns, labelled: bool) -> list[Example]:
    examples = []
    for line, record in iter_jsonl(path, lambda line, why: _fail(path, line, why)):
        if not isinstance(record, dict):
            _fail(path, line, "not a JSON object")
        where, names = f"{path}, line {line}", list(record)
        text = _pick(where, task, names, columns.text, "text", True)
        pair = _pick(where, task, names, columns.text_pair, "text", True) if columns.text_pair else None
        label = _pick(where, task, names, columns.label, "label", labelled)
        value, tags = record[text], record[label] if label else None
        if task == "ner":
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                _fail(path, line, f'"{text}" must be a list of words')
            if tags is not None and (not isinstance(tags, list) or len(tags) != len(value)):
                _fail(path, line, f'"{label}" must be a list of tags, one per word ({len(value)})')
            examples.append(Example(line, value, None, tags and [str(t) for t in tags]))
        else:
            if not isinstance(value, str) or (pair and not isinstance(record[pair], str)):
                _fail(path, line, f'"{text}" must be a string')
            examples.append(Example(line, value, pair and record[pair], None if tags is None else str(tags)))
    return examples


def _read_conll(path: Path, labelled: bool) -> list[Example]:
    """Word first, tag last, one word a line, sentences separated by blank lines; -DOCSTART- lines are skipped."""
    text = read_bytes(path).decode("utf-8-sig", errors="replace")
    examples, words, tags, start, width = [], [], [], 0, None
    for number, raw in enumerate([*text.splitlines(), ""], start=1):
        fields = raw.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                examples.append(Example(start, words, None, tags if labelled else None))
            words, tags = [], []
            continue
        if width is None:
            width = (len(fields), number)
        if len(fields) != width[0]:
            _fail(path, number, f"{len(fields)} columns where line {width[1]} has {width[0]} (a word with a space?)")
        if labelled and len(fields) < 2:
            _fail(path, number, "a word without a tag: CoNLL lines are WORD ... TAG")
        start = start if words else number
        words.append(fields[0])
        tags.append(fields[-1])
    return examples


def read_examples(path: str | Path, task: str, columns: Columns | None = None, labelled: bool = True) -> list[Example]:
    """The examples of a .csv, .tsv or .jsonl file (and for NER also CoNLL: .conll, .txt, .iob, .bio)."""
    path, columns = Path(path), columns or Columns()
    suffix = path.suffix.lower()
    if suffix in TABLES and task == "classification":
        examples = _read_table(path, task, columns, labelled)
    elif suffix == ".jsonl":
        examples = _read_jsonl(path, task, columns, labelled)
    elif suffix in CONLL and task == "ner":
        examples = _read_conll(path, labelled)
    else:
        kinds = ".csv, .tsv or .jsonl" if task == "classification" else f".jsonl or CoNLL ({', '.join(CONLL)})"
        raise LmforgeError(f"{path}: a {suffix or 'suffix-less'} file cannot hold {task} data; give a {kinds} file")
    if not examples:
        raise LmforgeError(f"{path} holds no examples: give a file with at least one")
    return examples


def _tag_key(tag: str) -> tuple:
    return (tag != "O", tag[2:], tag[:1])  # O first, then by entity type, B- before I-


def discover_labels(examples: list[Example], task: str, path: str | Path) -> list[str]:
    """The training labels, sorted (numbers numerically; for NER O first, then each type's B- and I-)."""
    if task == "ner":
        for ex in examples:
            for tag in ex.label:
                if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
                    _fail(Path(path), ex.line, f"tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        return sorted({t for ex in examples for t in ex.label}, key=_tag_key)
    labels = {ex.label for ex in examples}
    if len(labels) < 2:
        raise LmforgeError(f"{path}: every example has label {labels.pop()!r}; classification needs two or more")
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    return sorted(labels, key=int if numeric else None)


def check_labels(examples: list[Example], labels: list[str], path: str | Path) -> None:
    """Every label of an evaluation file must be one the model was trained on."""
    known = set(labels)
    for ex in examples:
        for label in ex.label if isinstance(ex.label, list) else [ex.label]:
            if label not in known:
                _fail(
                    Path(path), ex.line,
                    f"label {label!r} is not one of the model's labels ({', '.join(labels)}); "
                    "remove the example or fine-tune with it",
                )  # fmt: skip


def _truncate(a: list[int], b: list[int], budget: int) -> None:
    """Longest first: drops tokens from the end of the longer text until both fit."""
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()


def encode_classification(
    examples: list[Example], tokenizer: Tokenizer, family: str, max_seq_len: int, labels: list[str] | None
) -> list[dict]:
    """Token ids per example: [CLS] A [SEP] (B [SEP]) with segment ids for an encoder, A (<eos> B) for a GPT."""
    firsts = tokenizer.encode_batch([ex.text for ex in examples])
    pairs = tokenizer.encode_batch([ex.pair or "" for ex in examples])
    index = {label: i for i, label in enumerate(labels or [])}
    features = []
    for ex, a, b in zip(examples, firsts, pairs, strict=True):
        if family == "bert":
            _truncate(a, b, max_seq_len - (3 if b else 2))
            ids = [tokenizer.cls_id, *a, tokenizer.sep_id] + ([*b, tokenizer.sep_id] if b else [])
            types = [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2)
        else:
            sep = [tokenizer.eos_id] if b and tokenizer.eos_id is not None else []
            _truncate(a, b, max_seq_len - len(sep))
            ids, types = a + sep + b, None
        features.append({"input_ids": ids, "token_type_ids": types, "label": index.get(ex.label, IGNORE)})
    return features


def encode_tokens(
    examples: list[Example], tokenizer: Tokenizer, family: str, max_seq_len: int, labels: list[str] | None
) -> list[dict]:
    """Token ids per sentence with each word's tag on its first subword (IGNORE on the rest), and `words`: the
    position of each word's first subword (-1 for a word cut off by max_seq_len, or that has no subword)."""
    lead = 1 if family == "bert" else 0  # [CLS]
    space = tokenizer.kind == "bpe"  # byte-level BPE marks a word start by its leading space
    batch = [[w if i == 0 or not space else " " + w for i, w in enumerate(ex.text)] for ex in examples]
    encodings = tokenizer.backend.encode_batch(batch, is_pretokenized=True, add_special_tokens=False)
    index = {label: i for i, label in enumerate(labels or [])}
    features = []
    for ex, enc in zip(examples, encodings, strict=True):
        budget = max_seq_len - 2 * lead
        ids, word_ids = enc.ids[:budget], enc.word_ids[:budget]
        targets, words = [IGNORE] * len(ids), [-1] * len(ex.text)
        for pos, w in enumerate(word_ids):
            if w is not None and words[w] == -1:
                words[w] = pos + lead
                targets[pos] = index.get(ex.label[w], IGNORE) if ex.label else IGNORE
        if lead:
            ids, targets = [tokenizer.cls_id, *ids, tokenizer.sep_id], [IGNORE, *targets, IGNORE]
        features.append({"input_ids": ids, "token_type_ids": None, "label": targets, "words": words})
    return features


ENCODERS = {"classification": encode_classification, "ner": encode_tokens}


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pads a batch to its longest sequence (right padding; attention_mask True for real tokens)."""
    t = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(features), t, dtype=torch.bool)
    types = torch.zeros(len(features), t, dtype=torch.long)
    token_labels = isinstance(features[0]["label"], list)
    labels = torch.full((len(features), t), IGNORE, dtype=torch.long) if token_labels else None
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = True
        if f["token_type_ids"] is not None:
            types[i, :n] = torch.tensor(f["token_type_ids"])
        if token_labels:
            labels[i, :n] = torch.tensor(f["label"])
    if not token_labels:
        labels = torch.tensor([f["label"] for f in features])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
