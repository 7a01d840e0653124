"""Corpus cleaning: one newline convention, no invisible control characters, NFC-composed Unicode."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

# Format characters that carry meaning: ZWNJ and ZWJ (Indic and Persian shaping, emoji sequences like 👨‍👩‍👧)
# and the tag characters of subdivision flags (🏴󠁧󠁢󠁳󠁣󠁴󠁿).
KEEP = {"\n", "\t", "\u200c", "\u200d", *map(chr, range(0xE0020, 0xE0080))}

# documents in a text file are separated by a blank line (one holding at most spaces and tabs)
BLANK_LINE = re.compile(r"\n[ \t]*\n")


@functools.cache
def _invisible() -> re.Pattern:
    """A regex of the control (Cc) and format (Cf) characters not in KEEP, built on first use (~0.1 s).

    The class is written as ranges, which matches twice as fast as one entry per character.
    """
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in ("Cc", "Cf") and chr(code) not in KEEP:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]+")


def clean_text(text: str) -> str:
    """Newlines become "\\n", control and format characters (BOM, NUL, soft hyphen, bidi marks) go, then NFC.

    NFC comes last because removing a character can bring a base letter next to a combining mark.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", _invisible().sub("", text))


def clean_documents(
    documents: list[str], redact_pii: bool = False, dedup: str = "none", threshold: float = 0.8, progress: bool = False
) -> tuple[list[int], list[str], dict]:
    """Privacy-aware cleaning of documents already cleaned by clean_text: PII redacted (privacy.py), then duplicates
    removed (dedup.py), so that a removed duplicate shown in a report never shows the PII it held.

    Returns the indices of the documents kept, all the documents (redacted when asked) and the report: the PII
    count per type, documents in and out, exact and near duplicates removed and a few examples.
    """
    from tqdm import tqdm

    from lmforge.data.dedup import check_dedup, dedup_indices

    check_dedup(dedup, threshold)
    report: dict = {"redact_pii": redact_pii, "pii": {}}
    if redact_pii:
        from lmforge.data.privacy import TYPES
        from lmforge.data.privacy import redact_pii as redact

        counts = dict.fromkeys(TYPES, 0)
        redacted = []
        for doc in tqdm(documents, desc="redacting", unit="doc", disable=not progress or len(documents) < 1000):
            text, found = redact(doc)
            redacted.append(text)
            for kind, n in found.items():
                counts[kind] += n
        documents, report["pii"] = redacted, counts
    if dedup == "none":
        kept = list(range(len(documents)))
        report["dedup"] = {"mode": "none", "documents_in": len(documents), "documents_out": len(documents)}
    else:
        kept, report["dedup"] = dedup_indices(documents, dedup, threshold, progress and len(documents) >= 1000)
    return kept, documents, report
