"""Every planted PII item of every type is found (recall 1.0), and prose, numbers, dates and near misses are not."""

from pathlib import Path

import pytest

from lmforge.data.privacy import TYPES, iban_ok, luhn_ok, redact_pii

SHAKESPEARE = Path(__file__).parents[3] / "shared" / "data" / "tinyshakespeare.txt"

PLANTED = {
    "EMAIL": ["john.doe@example.com", "JANE_DOE+news@mail.example.co.uk", "a1@b-c.io"],
    "PHONE": ["+1 415 555 0132", "+44 20 7946 0958", "+49-30-901820", "(415) 555-0132", "415-555-0132", "415.555.0132"],
    "IPV4": ["192.168.0.1", "10.0.0.255", "8.8.8.8"],
    "IPV6": ["2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1", "2001:db8::8a2e:370:7334", "::1"],
    "CREDIT_CARD": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500005555555559",
        "378282246310005",
        "3782 822463 10005",
    ],  # fmt: skip
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"],
    "URL_WITH_CREDENTIALS": ["https://admin:s3cret@db.example.com:5432/x?y=1", "ftp://user:pw@files.example.org"],
}
CLEAN = (
    "On 2024-01-15 (15/01/2024, 12.05.2023) at 10:30:45 the price was $1,234.56 for 3 items; pi is 3.14159, the "
    "ratio 16:9, version 1.2.3 and v1.2.3.4, 256.1.1.1 is no address, std::vector is C++, room 101, call me maybe. "
    "See https://example.com/a@b and mailto-like user@localhost, order 1234567890, ISBN 978-3-16-148410-0."
)


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_every_planted_item_is_redacted(kind):
    for item in PLANTED[kind]:
        text = f"Contact: {item}, thanks.\nNext line {item}"
        out, counts = redact_pii(text)
        assert out == f"Contact: <{kind}>, thanks.\nNext line <{kind}>", item
        assert counts[kind] == 2 and sum(counts.values()) == 2


def test_recall_is_one_in_prose():
    prose = SHAKESPEARE.read_text(encoding="utf-8")[:20_000].split("\n\n")
    planted = [item for items in PLANTED.values() for item in items]
    docs = [f"{doc} {planted[i % len(planted)]} and so on." for i, doc in enumerate(prose)]
    out, counts = redact_pii("\n\n".join(docs))
    assert sum(counts.values()) == len(docs) and not any(item in out for item in planted)
    assert out.replace("\n\n", "").count("<") == len(docs)


def test_clean_text_is_unchanged():
    text = SHAKESPEARE.read_text(encoding="utf-8")[:50_000] + "\n" + CLEAN
    assert redact_pii(text) == (text, dict.fromkeys(TYPES, 0))


def test_checksums_decide():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")
    for bad in ("4111 1111 1111 1112", "5500005555555550", "DE89 3704 0044 0532 0130 01", "GB82WEST12345698765433"):
        assert redact_pii(f"number {bad} here") == (f"number {bad} here", dict.fromkeys(TYPES, 0))


def test_an_iban_followed_by_a_word_keeps_the_word():
    assert redact_pii("pay DE89 3704 0044 0532 0130 00 THEN leave")[0] == "pay <IBAN> THEN leave"
