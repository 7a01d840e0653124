"""Hostile input to the tokenizers: any Unicode (lone surrogates too), invalid UTF-8 bytes, empty strings, huge lines
and any ids. Encode and decode never crash; decode(encode(x)) == x wherever the tokenizer is lossless."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer, _unicode

ALPHABET = "abcxyz \n\t.,;中文👨\u200d👩\u200d👧é\u0301\x00\r"
ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
FUZZ = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe([ALPHABET * 3, "the quick brown fox\n" * 5], vocab_size=300)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train_char([ALPHABET])


@FUZZ
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@FUZZ
@given(st.text(alphabet=ALPHABET))
def test_char_round_trips_text_of_its_alphabet(char, text):
    ids = char.encode(text)
    assert len(ids) == len(text) and char.decode(ids) == text


@FUZZ
@given(st.text(alphabet=ANY_CHAR))
def test_any_str_encodes_lone_surrogates_as_replacement(bpe, char, text):
    replaced = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    assert bpe.decode(bpe.encode(text)) == replaced
    assert len(char.encode(text)) == len(text)


@FUZZ
@given(st.binary())
def test_bytes_encode_as_utf8_with_replacement(bpe, char, raw):
    text = raw.decode("utf-8", errors="replace")
    assert bpe.decode(bpe.encode(raw)) == text
    assert char.encode(raw) == char.encode(text)


@FUZZ
@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=20))
def test_any_ids_decode_or_fail_clearly(bpe, char, ids):
    for tok in (bpe, char):
        if all(0 <= i < tok.vocab_size for i in ids):
            assert isinstance(tok.decode(ids), str)
        else:
            with pytest.raises(LmforgeError, match="out of range"):
                tok.decode(ids)


def test_empty_and_huge_lines(bpe, char):
    """A 1 MB line with no newline round-trips (10 MB was checked by hand: a few seconds per MB on one slow core)."""
    assert bpe.encode("") == char.encode("") == [] and bpe.decode([]) == char.decode([]) == ""
    line = ("the quick brown fox 中文👨\u200d👩\u200d👧 " * 30_000)[:1_000_000]
    assert bpe.decode(bpe.encode(line)) == line
    line = (ALPHABET * 40_000)[:1_000_000]
    assert char.decode(char.encode(line)) == line


@FUZZ
@given(st.text(alphabet=ANY_CHAR) | st.text(alphabet=ALPHABET + "<unk>"))
def test_char_lookup_equals_the_tokenizers_backend(char, text):
    assert char._by_code_point is not None  # the fast path is what runs
    expected = char.backend.encode(_unicode(text), add_special_tokens=False).ids
    assert char.encode(text) == expected and char.encode_batch([text, text]) == [expected, expected]


def test_a_char_tokenizer_changed_by_hand_keeps_the_backend(char, tmp_path):
    from tokenizers import normalizers

    char.save(tmp_path / "t.json")
    custom = Tokenizer.load(tmp_path / "t.json")
    custom.backend.normalizer = normalizers.Lowercase()
    assert Tokenizer(custom.backend)._by_code_point is None


def test_tokens_added_to_a_char_tokenizer_are_honoured(char, tmp_path):
    char.save(tmp_path / "t.json")
    marked = Tokenizer.load(tmp_path / "t.json")
    marked.backend.add_special_tokens(["[E1]"])
    assert marked.encode("a[E1]b") == [marked.encode("a")[0], marked.vocab_size - 1, marked.encode("b")[0]]
