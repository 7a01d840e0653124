import unicodedata

import pytest

from lmforge.data import clean_text


def test_newlines_become_line_feeds():
    assert clean_text("a\r\nb\rc\nd\r\n\r\ne") == "a\nb\nc\nd\n\ne"


@pytest.mark.parametrize(
    "junk",
    ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\ufeff", "\u200b", "\u00ad", "\u200e", "\u202e", "\u2060", "\U000e0001"],
)
def test_control_and_format_characters_are_removed(junk):
    assert clean_text(f"a{junk}b{junk}{junk}c") == "abc"


def test_tabs_newlines_and_ordinary_text_stay():
    text = "col1\tcol2\n中文，标点。 Ωμέγα русский العربية   spaces\u00a0nbsp\u2028sep"
    assert clean_text(text) == text


def test_emoji_sequences_stay_whole():
    family = "👨\u200d👩\u200d👧"  # joined by zero-width joiners
    scotland = "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"  # tag characters
    persian = "می\u200cخواهم"  # zero-width non-joiner
    text = f"{family} {scotland} ❤\ufe0f {persian}"
    assert clean_text(text) == text


def test_nfc():
    assert clean_text("cafe\u0301") == "caf\u00e9"
    assert clean_text("\u1100\u1161") == "\uac00"  # Hangul jamo compose


def test_nfc_runs_after_removal():
    """Removing a zero-width space brings e and the combining accent together; the result must still be NFC."""
    out = clean_text("e\u200b\u0301")
    assert out == "\u00e9"
    assert unicodedata.is_normalized("NFC", out)


def test_idempotent():
    text = "x\r\n\x00cafe\u0301\u200b 👨\u200d👩 \ufeff"
    assert clean_text(clean_text(text)) == clean_text(text)


def test_large_text_keeps_length():
    text = ("The quick brown fox. 中文。\n" * 200_000) + "\x00"
    assert len(clean_text(text)) == len(text) - 1
