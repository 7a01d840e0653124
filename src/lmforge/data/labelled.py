"""Labelled examples for fine-tuning, shared by the tasks: the example types, CSV, TSV, JSONL and CoNLL readers, the
check of labels against a model's, and padded batches.

Every mistake in a file (a missing column, an empty or unknown label, a CoNLL line with the wrong number of columns,
a NUL or a byte that is not UTF-8, an empty file) is one LmforgeError that names the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.pretraining import IGNORE
from lmforge.data.records import iter_csv, iter_jsonl, read_utf8, text_fault
from lmforge.errors import LmforgeError

__all__ = ["IGNORE", "Columns", "Example", "check_labels", "collate", "read_labelled"]

TABLES = {".csv": ",", ".tsv": "\t"}
CONLL = (".conll", ".txt", ".iob", ".bio")
TEXT_COLUMNS = {False: ("text", "sentence"), True: ("tokens", "words")}  # by whether the text is a list of words
LABEL_COLUMNS = {False: ("label",), True: ("tags", "ner_tags", "labels")}


@dataclass
class Columns:
    """Which fields hold the text, the optional second text of a pair, and the label; None = the usual names.
    Relation data also names its two entity spans; QA reads question, context and answers as text, pair, label."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    head: str | None = None
    tail: str | None = None


@dataclass
class Example:
    """One input: a text (and maybe a second one) for classification, a list of words for NER; label(s) or None."""

    line: int
    text: str | list[str]
    pair: str | None = None
    label: str | list[str] | None = None
    lines: list[int] | None = None  # CoNLL: each word's line, so a bad tag is named where it stands

    def line_of(self, word: int) -> int:
        """The line of a word's tag: its own in CoNLL, the example's otherwise."""
        return self.lines[word] if self.lines else self.line


def _fail(path: Path, line: int, why: str) -> None:
    raise LmforgeError(f"{path}, line {line}: {why}")


def require_label(path: Path, line: int, label: object, column: str) -> None:
    """An empty label would become a class named ''."""
    if label is None or not str(label).strip():
        _fail(path, line, f'empty label in "{column}": give every example its label, or remove the example')


def _pick(where: str, words: bool, names: list[str], given: str | None, kind: str, required: bool) -> str | None:
    """The column to read: the one given (which must exist), else the first usual name present."""
    candidates = (given,) if given else (TEXT_COLUMNS if kind == "text" else LABEL_COLUMNS)[words]
    found = next((c for c in candidates if c in names), None)
    if found is None and required:
        flag = "--text-column" if kind == "text" else "--label-column"
        raise LmforgeError(
            f"{where}: no {kind} column {' or '.join(repr(c) for c in candidates)} (columns: {', '.join(names)}); "
            f"name the right one with {flag}"
        )
    return found


def _read_table(path: Path, words: bool, columns: Columns, labelled: bool) -> list[Example]:
    header, rows = iter_csv(path, lambda line, why: _fail(path, line, why), TABLES[path.suffix.lower()])
    if not header:
        raise LmforgeError(f"{path} is empty: give a file with a header row and one example per row")
    text = _pick(str(path), words, header, columns.text, "text", True)
    pair = _pick(str(path), words, header, columns.text_pair, "text", True) if columns.text_pair else None
    label = _pick(str(path), words, header, columns.label, "label", labelled)
    examples = []
    for line, row in rows:
        cells = {name: row[header.index(name)] for name in (text, pair, label) if name}
        for cell in cells.values():
            if why := text_fault(cell):
                _fail(path, line, f"{why}: save the file as UTF-8 text")
        if labelled:
            require_label(path, line, cells[label], label)
        examples.append(Example(line, cells[text], pair and cells[pair], label and cells[label]))
    return examples


def _read_jsonl(path: Path, words: bool, columns: Columns, labelled: bool) -> list[Example]:
    examples = []
    for line, record in iter_jsonl(path, lambda line, why: _fail(path, line, why)):
        if not isinstance(record, dict):
            _fail(path, line, "not a JSON object")
        where, names = f"{path}, line {line}", list(record)
        text = _pick(where, words, names, columns.text, "text", True)
        pair = _pick(where, words, names, columns.text_pair, "text", True) if columns.text_pair else None
        label = _pick(where, words, names, columns.label, "label", labelled)
        value, tags = record[text], record[label] if label else None
        if words:
            if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                _fail(path, line, f'"{text}" must be a list of words')
            if (labelled or tags is not None) and (not isinstance(tags, list) or len(tags) != len(value)):
                _fail(path, line, f'"{label}" must be a list of tags, one per word ({len(value)})')
            if labelled:
                for tag in tags:
                    require_label(path, line, tag, label)
            examples.append(Example(line, value, None, tags and [str(t) for t in tags]))
        else:
            if not isinstance(value, str) or (pair and not isinstance(record[pair], str)):
                _fail(path, line, f'"{text}" must be a string')
            if labelled:
                require_label(path, line, tags, label)
            examples.append(Example(line, value, pair and record[pair], None if tags is None else str(tags)))
    return examples


def _read_conll(path: Path, labelled: bool) -> list[Example]:
    """Word first, tag last, one word a line, sentences separated by blank lines; -DOCSTART- lines are skipped."""
    examples, words, tags, lines, width = [], [], [], [], None
    for number, raw in enumerate([*read_utf8(path).split("\n"), ""], start=1):
        fields = raw.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                examples.append(Example(lines[0], words, None, tags if labelled else None, lines))
            words, tags, lines = [], [], []
            continue
        if width is None:
            width = (len(fields), number)
        if len(fields) != width[0]:
            _fail(path, number, f"{len(fields)} columns where line {width[1]} has {width[0]} (a word with a space?)")
        if labelled and len(fields) < 2:
            _fail(path, number, "a word without a tag: CoNLL lines are WORD ... TAG")
        words.append(fields[0])
        tags.append(fields[-1])
        lines.append(number)
    return examples


def read_labelled(
    path: str | Path, columns: Columns | None = None, labelled: bool = True, words: bool = False, task: str = "text"
) -> list[Example]:
    """The examples of a .csv, .tsv or .jsonl file of texts, or with `words` (token tagging) of a .jsonl or CoNLL
    file (.conll, .txt, .iob, .bio) of word lists."""
    path, columns = Path(path), columns or Columns()
    suffix = path.suffix.lower()
    if suffix in TABLES and not words:
        examples = _read_table(path, words, columns, labelled)
    elif suffix == ".jsonl":
        examples = _read_jsonl(path, words, columns, labelled)
    elif suffix in CONLL and words:
        examples = _read_conll(path, labelled)
    else:
        kinds = f".jsonl or CoNLL ({', '.join(CONLL)})" if words else ".csv, .tsv or .jsonl"
        raise LmforgeError(f"{path}: a {suffix or 'suffix-less'} file cannot hold {task} data; give a {kinds} file")
    return nonempty(examples, path)


def nonempty(examples: list, path: str | Path) -> list:
    """The examples, or one clear error for a file that holds none."""
    if not examples:
        raise LmforgeError(f"{path} holds no examples: give a file with at least one")
    return examples


def check_labels(examples: list[Example], labels: list[str], path: str | Path) -> None:
    """Every label of an evaluation file must be one the model was trained on."""
    known = set(labels)
    for ex in examples:
        per_word = isinstance(ex.label, list)
        for i, label in enumerate(ex.label if per_word else [ex.label]):
            if label not in known:
                _fail(
                    Path(path), ex.line_of(i) if per_word else ex.line,
                    f"label {label!r} is not one of the model's labels ({', '.join(labels)}); "
                    "remove the example or fine-tune with it",
                )  # fmt: skip


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
