"""IncrementalDetokenizer: its pieces add up to tokenizer.decode(all ids), for every tokenizer kind lmforge reads."""

import functools

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from lmforge.generation.detokenize import IncrementalDetokenizer
from lmforge.tokenizer import Tokenizer

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog. Don't stop; it's fine.\n",
    "中文分词测试：你好，世界。机器学习和自然语言处理。\n",
    "Mixed 中英文 text, русский, العربية, ελληνικά. Café naïve résumé.\n",
    "emoji 👨‍👩‍👧 family, 🏴󠁧󠁢󠁳󠁣󠁴󠁿 flag, 🎉🎉 party\n",
    "tabs\tand  spaces   runs\n\n\nblank lines\n  leading and trailing  ",
]


def unigram() -> Tokenizer:
    """An ALBERT-like SentencePiece Unigram: ▁ marks a word start, and the text's first word decodes without it."""
    backend = tokenizers.Tokenizer(models.Unigram())
    backend.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
        unk_token="<unk>",
        show_progress=False,
    )
    backend.train_from_iterator(TEXTS * 20, trainer)
    return Tokenizer(backend)


BUILDERS = {
    "char": lambda: Tokenizer.train_char(TEXTS),
    "bpe": lambda: Tokenizer.train_bpe(TEXTS * 20, vocab_size=400),
    "wordpiece": lambda: Tokenizer.train_wordpiece(TEXTS * 20, vocab_size=300),
    "unigram": unigram,
}


@functools.cache
def tokenizer(kind: str) -> Tokenizer:
    tok = BUILDERS[kind]()
    assert tok.kind == kind
    return tok


def pieces(tok: Tokenizer, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tok)
    return [detokenizer.add(i) for i in ids] + [detokenizer.flush()]


@pytest.mark.parametrize("kind", list(BUILDERS))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_pieces_of_any_token_sequence_add_up_to_decode(kind, data):
    """Random ids: specials, unknowns, ## pieces at the start, and (byte-level BPE) broken UTF-8 of every sort."""
    tok = tokenizer(kind)
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    assert "".join(pieces(tok, ids)) == tok.decode(ids)


@pytest.mark.parametrize("kind", list(BUILDERS))
@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=60) | st.sampled_from(TEXTS))
def test_pieces_of_encoded_text_add_up_to_decode(kind, text):
    """Real text, where a byte-level BPE splits Chinese characters and emoji over several tokens."""
    tok = tokenizer(kind)
    ids = tok.encode(text)
    assert "".join(pieces(tok, ids)) == tok.decode(ids)


def test_a_character_split_over_tokens_comes_out_whole_once_complete():
    tok = tokenizer("bpe")
    stand_ins = "".join(w for w, _ in tok.backend.pre_tokenizer.pre_tokenize_str("é中🎉"))  # a char a byte: 2 + 3 + 4
    ids = [tok.backend.token_to_id(c) for c in stand_ins]  # one token per byte
    assert pieces(tok, ids) == ["", "é", "", "", "中", "", "", "", "🎉", ""]
    assert "".join(pieces(tok, ids[:-1])) == tok.decode(ids[:-1]) == "é中\ufffd"  # flushed as decode gives it


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_a_word_piece_continues_the_word_and_a_new_word_gets_its_space(kind):
    tok = tokenizer(kind)
    ids = tok.encode("The quick brown fox jumps over the lazy dog.")
    got = pieces(tok, ids)
    assert "".join(got) == tok.decode(ids) == "the quick brown fox jumps over the lazy dog."
    assert not got[0].startswith(" ") and sum(p.startswith(" ") for p in got) == 8  # words after the first: a space


def test_the_window_stays_short_however_long_the_text(monkeypatch):
    tok = tokenizer("bpe")
    ids = tok.encode("".join(TEXTS) * 10)
    decode, calls = tok.decode, []
    monkeypatch.setattr(tok, "decode", lambda window: calls.append(len(window)) or decode(window))
    assert "".join(pieces(tok, ids)) == decode(ids) and len(ids) > 1000
    assert max(calls) <= 8 and len(calls) <= 2 * len(ids) + 1  # ids decoded per call, calls per token: bounded
