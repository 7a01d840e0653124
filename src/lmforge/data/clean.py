"""Corpus cleaning: one newline convention, no invisible control characters, NFC-composed Unicode."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

# Format characters that carry meaning: ZWNJ and ZWJ (Indic and Persian shaping, emoji sequences like 👨‍👩‍👧)
# and the tag characters of subdivision flags (🏴󠁧󠁢󠁳󠁣󠁴󠁿).
KEEP = {"\n", "\t", "\u200c", "\u200d", *map(chr, range(0xE0020, 0xE0080))}


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
