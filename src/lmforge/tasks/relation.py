"""Relation extraction: sentences with two entities given as character spans, read from JSONL, the entities marked
in the text with [E1] ... [/E1] and [E2] ... [/E2] (Baldini Soares et al., 2019), cut to a window of tokens that keeps
all four markers, and classified from the final states at the two start markers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken
from torch import nn

from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, nonempty, require_label
from lmforge.data.records import iter_jsonl
from lmforge.errors import LmforgeError
from lmforge.models.heads import EntityPairClassifier
from lmforge.tasks.base import Task, label_record
from lmforge.tasks.classification import sorted_labels
from lmforge.tasks.metrics import relation_metrics
from lmforge.tokenizer import Tokenizer

MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")
TEXT_KEYS, LABEL_KEYS = ("text", "sentence"), ("label", "relation")
HEAD_KEYS, TAIL_KEYS = ("head", "subj", "h"), ("tail", "obj", "t")


@dataclass
class RelationExample:
    """A text, its head and tail entities as [start, end) character spans, and the relation (None when unknown)."""

    line: int
    text: str
    head: tuple[int, int]
    tail: tuple[int, int]
    label: str | None = None
    where: str = "--text"  # the file and line, for errors found after reading


def mark(text: str, head: tuple[int, int], tail: tuple[int, int]) -> str:
    """The text with [E1] [/E1] around the head and [E2] [/E2] around the tail; at one position a closing marker
    comes before an opening one, so adjacent entities stay apart."""
    cuts = sorted(
        [(head[0], 1, MARKERS[0]), (head[1], 0, MARKERS[1]), (tail[0], 1, MARKERS[2]), (tail[1], 0, MARKERS[3])]
    )
    pieces, last = [], 0
    for position, _, marker in cuts:
        pieces += [text[last:position], marker]
        last = position
    return "".join(pieces) + text[last:]


def unmark(marked: str, where: str = "--text") -> RelationExample:
    """The example a user wrote with inline markers, e.g. "[E1]Jobs[/E1] founded [E2]Apple[/E2]"."""
    pieces = re.split("(" + "|".join(map(re.escape, MARKERS)) + ")", marked)
    text, at = "", {}
    for piece in pieces:
        if piece in MARKERS:
            if piece in at:
                raise LmforgeError(f"{where}: {piece} appears twice; mark each entity once")
            at[piece] = len(text)
        else:
            text += piece
    spans = [(at.get(a), at.get(b)) for a, b in (MARKERS[:2], MARKERS[2:])]
    if any(s is None or e is None or s >= e for s, e in spans):
        raise LmforgeError(f'{where}: mark both entities, e.g. "[E1]Jobs[/E1] founded [E2]Apple[/E2]"')
    return RelationExample(0, text, spans[0], spans[1], None, where)


def _span(record: dict, keys: tuple[str, ...], given: str | None, text: str, where: str) -> tuple[int, int]:
    """An entity as {"start": s, "end": e}, [s, e], or flat KEY_start / KEY_end fields (end exclusive)."""
    key = next((k for k in ((given,) if given else keys) if k in record or f"{k}_start" in record), None)
    if key is None:
        names = " or ".join(repr(k) for k in ((given,) if given else keys))
        raise LmforgeError(
            f"{where}: no entity {names} (give {{'start': s, 'end': e}}); name its key with --head-column or "
            "--tail-column"
        )
    value = record.get(key, {"start": record.get(f"{key}_start"), "end": record.get(f"{key}_end")})
    if isinstance(value, dict):
        value = [value.get("start"), value.get("end")]
    ok = isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
    if not ok or not 0 <= value[0] < value[1] <= len(text):
        raise LmforgeError(
            f'{where}: entity "{key}" must be a character span start < end within the text (0 to {len(text)}), '
            f"not {value!r}"
        )
    return value[0], value[1]


def read_relation(path: Path, columns: Columns, labelled: bool) -> list[RelationExample]:
    """Relation examples of a .jsonl file, one sentence a line; spans are checked against the text."""
    if path.suffix.lower() != ".jsonl":
        raise LmforgeError(f"{path}: relation data is JSON lines; give a .jsonl file with text, head, tail, label")
    examples = []

    def fail(line: int, why: str) -> None:
        raise LmforgeError(f"{path}, line {line}: {why}")

    for line, record in iter_jsonl(path, fail):
        where = f"{path}, line {line}"
        if not isinstance(record, dict):
            fail(line, "not a JSON object")
        text_key = next((k for k in ((columns.text,) if columns.text else TEXT_KEYS) if k in record), None)
        if text_key is None or not isinstance(record[text_key], str):
            fail(line, f'no text string "{columns.text or "text"}"; name its key with --text-column')
        label_key = next((k for k in ((columns.label,) if columns.label else LABEL_KEYS) if k in record), None)
        if labelled and label_key is None:
            fail(line, f'no label "{columns.label or "label"}"; name its key with --label-column')
        text = record[text_key]
        head = _span(record, HEAD_KEYS, columns.head, text, where)
        tail = _span(record, TAIL_KEYS, columns.tail, text, where)
        if head[0] < tail[1] and tail[0] < head[1]:
            fail(line, f"the entities overlap ({head} and {tail}); give two separate spans")
        label = record[label_key] if label_key else None
        if labelled:
            require_label(path, line, label, label_key)
        examples.append(RelationExample(line, text, head, tail, None if label is None else str(label), where))
    return examples


def add_markers(tokenizer: Tokenizer) -> tuple[list[int], bool]:
    """Adds the four markers as special tokens (never split, never normalised); returns their ids, and whether any
    was new (a relation model's tokenizer has them already, and its backbone trained rows for them)."""
    added = tokenizer.backend.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in MARKERS])
    return [tokenizer.backend.token_to_id(m) for m in MARKERS], added > 0


def window(n: int, first: int, last: int, budget: int) -> int:
    """The start of a `budget`-token window over n tokens holding positions first..last, centred on them."""
    return max(0, min(first - (budget - (last - first + 1)) // 2, n - budget))


def encode_relation(
    examples: list[RelationExample], tokenizer: Tokenizer, family: str, max_seq_len: int, labels: list[str] | None
) -> list[dict]:
    """[CLS] marked text [SEP] for an encoder, the marked text for a GPT; a text too long is cut to a window around
    both entities (an error when the entities alone do not fit)."""
    marker_ids = [tokenizer.backend.token_to_id(m) for m in MARKERS]
    if None in marker_ids:
        raise LmforgeError("this tokenizer has no entity markers: fine-tune the model with --task relation")
    lead = 1 if family == "bert" else 0
    budget, index = max_seq_len - 2 * lead, {label: i for i, label in enumerate(labels or [])}
    features = []
    marked = tokenizer.encode_batch([mark(ex.text, ex.head, ex.tail) for ex in examples])
    for ex, ids in zip(examples, marked, strict=True):
        at = [i for i, t in enumerate(ids) if t in marker_ids]
        if at[-1] - at[0] + 1 > budget:
            raise LmforgeError(
                f"{ex.where}: the entities and the words between them take {at[-1] - at[0] + 1} tokens, more than "
                f"fit in --max-seq-len {max_seq_len}; raise it or shorten the text"
            )
        start = window(len(ids), at[0], at[-1], budget)
        ids = ids[start : start + budget]
        if lead:
            ids = [tokenizer.cls_id, *ids, tokenizer.sep_id]
        features.append({"input_ids": ids, "token_type_ids": None, "label": index.get(ex.label, IGNORE)})
    return features


class Relation(Task):
    name, metric = "relation", "macro_f1"

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list[RelationExample]:
        return nonempty(read_relation(path, columns, labelled), path)

    def labels(self, examples: list[RelationExample], path: str | Path) -> list[str]:
        return sorted_labels({ex.label for ex in examples}, path, self.name)

    def setup(self, backbone: nn.Module, tokenizer: Tokenizer, task: TaskConfig) -> None:
        """The markers become special tokens; a backbone that has no rows for them grows them."""
        task.markers, new = add_markers(tokenizer)
        if new:
            backbone.add_token_rows(task.markers)

    def encode(
        self, examples: list[RelationExample], tokenizer: Tokenizer, family: str, task: TaskConfig, labelled: bool
    ) -> list[dict]:
        return encode_relation(examples, tokenizer, family, task.max_seq_len, task.labels if labelled else None)

    def build_head(self, backbone: nn.Module, task: TaskConfig) -> nn.Module:
        return EntityPairClassifier(backbone, len(task.labels), task.markers)

    def score(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> dict:
        return relation_metrics([f["label"] for f in features], [int(p.argmax()) for p in probs], task.labels)

    def records(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> list[dict]:
        return [
            {"text": ex.text, "head": list(ex.head), "tail": list(ex.tail)} | label_record(task, p)
            for ex, p in zip(examples, probs, strict=True)
        ]

    def example(self, text: str, pair: str | None, n: int) -> RelationExample:
        return unmark(text, f"--text {n}")
