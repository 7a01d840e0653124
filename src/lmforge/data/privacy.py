"""PII redaction: e-mail addresses, phone numbers, IP addresses, card numbers, IBANs and URLs with a password become
typed placeholders (<EMAIL>, ...), so a model trained on a scraped corpus cannot recite them.

Precision rules: a card number must pass the Luhn check and an IBAN its mod-97 checksum; an IPv4 octet is at most
255; an IPv6 address must be a full eight groups or hold "::" and a decimal digit; a phone number is either
international (+, 8 to 15 digits) or North American (3-3-4 digits). Dates, times, prices and versions (1.2.3, v1.2.3.4)
stay as they are; a bare 1.2.3.4 is a valid IPv4 address and is redacted.
Speed: only the lines holding a trigger (@, a digit, or a hex digit beside a colon) are searched with the full
patterns, so prose passes at the speed of one simple scan.
"""

from __future__ import annotations

import re

TYPES = ("URL_WITH_CREDENTIALS", "EMAIL", "IBAN", "IPV6", "IPV4", "CREDIT_CARD", "PHONE")

_H = "[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV6 = "|".join(
    [
        rf"(?:{_H}:){{7}}{_H}",
        rf"(?:{_H}:){{1,7}}:(?!{_H})",
        *(rf"(?:{_H}:){{1,{7 - n}}}(?::{_H}){{{1},{n}}}" for n in range(1, 7)),
        rf":(?::{_H}){{1,7}}",
    ]
)
_PATTERNS = {
    "URL_WITH_CREDENTIALS": r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:[^\s/@]+@[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]",
    "EMAIL": r"\b[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}\b",
    "IBAN": r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)",
    "IPV6": rf"(?<![\w:.])(?:{_IPV6})(?![\w:])",
    "IPV4": rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)",
    # contiguous, 4-4-4-x or Amex's 4-6-5
    "CREDIT_CARD": r"(?<![\w.+-])(?:\d{13,19}|\d{4}(?P<s1>[ -])\d{4}(?P=s1)\d{4}(?P=s1)\d{1,7}"
    r"|\d{4}(?P<s2>[ -])\d{6}(?P=s2)\d{5})(?!\w|[.-]\d)",
    "PHONE": r"(?<![\w+.-])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}|(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4})"
    r"(?!\w|[.-]\d)",
}
_ALL = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _PATTERNS.items()))
# a line is searched only when it holds one of these: every pattern above needs an @, a digit, or a "::"
_TRIGGER = re.compile(r"[@0-9]|::")


def luhn_ok(digits: str) -> bool:
    """The Luhn check digit of a card number (every second digit from the right doubled)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: country and check digits moved to the end, letters as 10..35, the number mod 97 is 1."""
    iban = iban.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    return int("".join(str(int(ch, 36)) for ch in iban[4:] + iban[:4])) % 97 == 1


def _iban(found: str) -> tuple[str, str] | None:
    """(the valid IBAN, the text after it): the pattern may have taken a following word, so shorter is tried too."""
    groups = found.split(" ")
    for end in range(len(groups), 0, -1):
        candidate = " ".join(groups[:end])
        if iban_ok(candidate):
            return candidate, found[len(candidate) :]
    return None


def _replacement(match: re.Match, counts: dict[str, int]) -> str:
    kind, found = match.lastgroup, match[0]
    if kind == "CREDIT_CARD":
        digits = re.sub(r"[ -]", "", found)
        if not luhn_ok(digits):
            return found
    elif kind == "IBAN":
        valid = _iban(found)
        if valid is None:
            return found
        counts[kind] += 1
        return "<IBAN>" + valid[1]
    elif kind == "IPV6" and not any(ch.isdigit() for ch in found):
        return found  # "dead::beef" or "Abc::Def" is more likely code than an address
    elif kind == "PHONE" and not 8 <= sum(ch.isdigit() for ch in found) <= 15:
        return found
    counts[kind] += 1
    return f"<{kind}>"


def redact_pii(text: str) -> tuple[str, dict[str, int]]:
    """text with each PII item replaced by its typed placeholder, and the count per type (every type, 0 if none)."""
    counts = dict.fromkeys(TYPES, 0)
    pieces, done = [], 0
    for trigger in _TRIGGER.finditer(text):
        if trigger.start() < done:
            continue
        start = text.rfind("\n", 0, trigger.start()) + 1
        end = text.find("\n", trigger.end())
        end = len(text) if end < 0 else end
        pieces += [text[done:start], _ALL.sub(lambda m: _replacement(m, counts), text[start:end])]
        done = end
    if not pieces:
        return text, counts
    pieces.append(text[done:])
    return "".join(pieces), counts
