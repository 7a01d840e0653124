"""Corpora stored as records: JSON lines or CSV with a "text" field, one document per record.

A malformed record (bad JSON or CSV, bytes that are not UTF-8, a NUL, no "text") either stops preparation with the
file and line number (on_bad_line="error") or is skipped and counted (on_bad_line="skip"), so one broken line in a
scraped corpus costs that line, not the run.
"""

from __future__ import annotations

import csv
import io
import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizer import SURROGATES

FIELD = "text"
SUFFIXES = (".jsonl", ".csv")


def is_records(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


class _Records:
    """Collects the texts; bad_line() applies the on_bad_line policy."""

    def __init__(self, path: Path, on_bad_line: str):
        if on_bad_line not in ("error", "skip"):
            raise LmforgeError(f"on_bad_line must be error or skip, not {on_bad_line!r}")
        self.path, self.on_bad_line, self.texts, self.bad = path, on_bad_line, [], 0

    def bad_line(self, line: int, why: str) -> None:
        if self.on_bad_line == "error":
            raise LmforgeError(
                f"{self.path}, line {line}: {why}; fix the line or skip bad lines (data.on_bad_line=skip, "
                "--on-bad-line skip)"
            )
        self.bad += 1


def check_data_file(path: Path) -> None:
    """Refuses, before opening it, a path that is not a regular file: /dev/zero never ends, and a pipe such as
    <(cmd) blocks or is used up by the first of the two reads (the hash and the text)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise LmforgeError(
            f"data file {path} not found: check the path (relative paths start at {Path.cwd()})"
        ) from None
    except OSError as e:
        raise LmforgeError(f"cannot read data file {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise LmforgeError(f"data file {path} is a directory: give a UTF-8 text file")
    if not stat.S_ISREG(mode):
        raise LmforgeError(f"data file {path} is not a regular file (a pipe or a device): save it to a file first")


def read_bytes(path: Path) -> bytes:
    check_data_file(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise LmforgeError(f"cannot read data file {path}: {e.strerror}") from None


def text_fault(text: str) -> str | None:
    """Why training refuses a text decoded with errors="surrogateescape" (None when it does not): a NUL, as binary
    data and UTF-16 hold, or a byte that is not UTF-8 (escaped as U+DC80..U+DCFF)."""
    if "\0" in text:
        return "a NUL byte in the text (binary data, or UTF-16?)"
    if found := SURROGATES.search(text):
        return f"not UTF-8 (byte 0x{ord(found[0]) & 0xFF:02x})"
    return None


def read_utf8(path: Path) -> str:
    """The text of a file read whole (CoNLL, SQuAD JSON), a BOM dropped; a NUL or a byte that is not UTF-8 is refused
    at its line, as training refuses them."""
    text = read_bytes(path).decode("utf-8-sig", errors="surrogateescape")
    for number, line in enumerate(text.split("\n"), start=1):
        if why := text_fault(line):
            raise LmforgeError(f"{path}, line {number}: {why}: save the file as UTF-8 text")
    return text


def iter_jsonl(path: Path, bad_line: Callable[[int, str], None]) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of each non-blank line; a line that is not UTF-8 or not JSON goes to bad_line."""
    data = read_bytes(path).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as Windows tools write
    for number, raw in enumerate(data.split(b"\n"), start=1):  # CRLF is fine: JSON allows a trailing \r
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw.decode("utf-8"))  # a raw NUL or control character is invalid JSON
        except UnicodeDecodeError as e:
            bad_line(number, f"not UTF-8 (byte 0x{raw[e.start]:02x})")
        except ValueError as e:
            bad_line(number, f"not valid JSON ({e})")


def iter_csv(
    path: Path, bad_line: Callable[[int, str], None], delimiter: str = ","
) -> tuple[list[str] | None, Iterator[tuple[int, list[str]]]]:
    """The header row and an iterator of (line number, row) over the rest; a row that is not valid CSV or has the
    wrong number of fields goes to bad_line. TSV (delimiter tab) has no quoting, as GLUE writes it."""
    text = read_bytes(path).decode("utf-8-sig", errors="surrogateescape")  # bad bytes fail their own row only
    csv.field_size_limit(2**31 - 1)  # a document may well exceed csv's default limit of 128 KiB a field
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(rows, None)
    except csv.Error as e:
        raise LmforgeError(f"{path}, line 1: the header row is not valid CSV ({e}): fix the first row") from None

    def body() -> Iterator[tuple[int, list[str]]]:
        while True:
            first = rows.line_num + 1  # a quoted field can span lines; report where the row starts
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as e:
                bad_line(first, f"not valid CSV ({e})")
                continue
            if not row:
                continue
            if len(row) != len(header):
                bad_line(first, f"{len(row)} fields where the header has {len(header)} (a stray quote or comma?)")
                continue
            yield first, row

    return header, body()


def read_jsonl_texts(path: str | Path, on_bad_line: str = "error") -> tuple[list[str], int]:
    """The "text" of each JSON object, one per line (blank lines ignored), and the number of bad lines skipped."""
    records = _Records(Path(path), on_bad_line)
    for number, record in iter_jsonl(Path(path), records.bad_line):
        if not isinstance(record, dict) or not isinstance(record.get(FIELD), str):
            records.bad_line(number, f'not a JSON object with a string "{FIELD}" field')
        elif SURROGATES.search(record[FIELD]):
            records.bad_line(number, "an unpaired surrogate escape (\\ud800-\\udfff) in the text")
        else:
            records.texts.append(record[FIELD])
    return records.texts, records.bad


def read_csv_texts(path: str | Path, on_bad_line: str = "error") -> tuple[list[str], int]:
    """The "text" column of each row of a CSV file with a header, and the number of bad rows skipped."""
    path = Path(path)
    records = _Records(path, on_bad_line)
    header, rows = iter_csv(path, records.bad_line)
    if not header or FIELD not in header:
        raise LmforgeError(f'{path}: the first row must be a header with a "{FIELD}" column, e.g. id,{FIELD}')
    column = header.index(FIELD)
    for first, row in rows:
        if why := text_fault(row[column]):
            records.bad_line(first, why)
        else:
            records.texts.append(row[column])
    return records.texts, records.bad


def read_records(path: str | Path, on_bad_line: str = "error") -> tuple[list[str], int]:
    """The documents of a .jsonl or .csv file and the number of bad lines skipped; an error if none is left."""
    read = read_csv_texts if Path(path).suffix.lower() == ".csv" else read_jsonl_texts
    texts, bad = read(path, on_bad_line)
    if not texts:
        raise LmforgeError(f'{path} holds no record with a "{FIELD}" ({bad} bad lines skipped): give a file with text')
    return texts, bad
