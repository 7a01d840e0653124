import json

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers import models

from lmforge.errors import LmforgeError
from lmforge.tokenizer import EOS, Tokenizer

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.\n",
    "中文分词测试：你好，世界。机器学习和自然语言处理。\n",
    "Mixed 中英文 text, русский, العربية, ελληνικά.\n",
    "emoji 👨‍👩‍👧 family, 🏴󠁧󠁢󠁳󠁣󠁴󠁿 flag, 🎉🎉 party\n",
    "tabs\tand  spaces   runs\n\n\nblank lines\n  leading and trailing  ",
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(TEXTS * 20, vocab_size=400)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train_char(TEXTS)


@pytest.mark.parametrize("text", TEXTS + ["".join(TEXTS)])
def test_char_round_trip_is_exact_with_one_id_per_character(char, text):
    ids = char.encode(text)
    assert len(ids) == len(text)
    assert char.decode(ids) == text


def test_char_vocab_is_sorted_characters_then_unknown(char):
    chars = sorted(set("".join(TEXTS)))
    assert char.vocab_size == len(chars) + 1
    assert char.encode("".join(chars)) == list(range(len(chars)))  # nanoGPT's shakespeare_char ids
    assert char.encode("Z") == [len(chars)]  # unseen -> the unknown token, last
    assert char.decode(char.encode("Z")) == "<unk>"
    assert char.encode("<unk>") == [char.encode(c)[0] for c in "<unk>"]  # the literal text is five characters


@pytest.mark.parametrize("text", TEXTS + ["never seen: Ωμέγα ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \r\n \x00 \u200b", "   \n\t\t\n  ", ""])
def test_bpe_round_trip_is_lossless_for_any_unicode(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_learns_merges_up_to_the_vocab_size(bpe):
    assert 257 < bpe.vocab_size <= 400
    text = TEXTS[0]
    assert len(bpe.encode(text)) < len(text.encode("utf-8")) / 2


def test_bpe_training_is_deterministic(bpe):
    assert Tokenizer.train_bpe(TEXTS * 20, vocab_size=400).backend.to_str() == bpe.backend.to_str()


def test_eos(bpe, char):
    assert bpe.eos_id == bpe.backend.token_to_id(EOS) is not None
    assert bpe.encode(f"a{EOS}b") == bpe.encode("a") + [bpe.eos_id] + bpe.encode("b")
    assert bpe.decode([bpe.eos_id]) == EOS
    assert char.eos_id is None


def test_kind(bpe, char):
    assert (bpe.kind, char.kind) == ("bpe", "char")


@pytest.mark.parametrize("name", ["bpe", "char"])
def test_save_load_keeps_encodings_and_kind(tmp_path, request, name):
    tok = request.getfixturevalue(name)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    loaded = Tokenizer.load(path)
    assert (loaded.kind, loaded.vocab_size, loaded.eos_id) == (tok.kind, tok.vocab_size, tok.eos_id)
    text = "".join(TEXTS)
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    tok.save(path)  # overwriting works
    assert Tokenizer.load(path).encode(text) == tok.encode(text)


def test_kind_comes_from_the_file_model_type(tmp_path, char):
    path = tmp_path / "tokenizer.json"
    char.save(path)
    assert json.loads(path.read_text())["model"]["type"] == "WordLevel"
    assert Tokenizer.load(path).kind == "char"


def test_encode_batch_matches_encode(bpe):
    assert bpe.encode_batch(TEXTS) == [bpe.encode(t) for t in TEXTS]


def test_decode_accepts_tensors_and_arrays(bpe):
    ids = bpe.encode(TEXTS[1])
    assert bpe.decode(torch.tensor(ids)) == bpe.decode(np.array(ids, dtype=np.uint16)) == TEXTS[1]


def test_training_prints_no_progress_by_default(capfd):
    Tokenizer.train_bpe(TEXTS, vocab_size=300)
    assert capfd.readouterr().err == ""


def test_bpe_vocab_too_small():
    with pytest.raises(LmforgeError, match="at least 257"):
        Tokenizer.train_bpe(TEXTS, vocab_size=100)


def test_load_errors(tmp_path):
    with pytest.raises(LmforgeError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(LmforgeError, match="not found"):
        Tokenizer.load(tmp_path)
    bad = tmp_path / "bad.json"
    for content in ["not json at all", '{"model": 3}', ""]:
        bad.write_text(content)
        with pytest.raises(LmforgeError, match="not a valid tokenizer.json") as e:
            Tokenizer.load(bad)
        assert "\n" not in str(e.value)


def test_unsupported_model_is_refused(tmp_path):
    path = tmp_path / "wordpiece.json"
    tokenizers.Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(LmforgeError, match="WordPiece"):
        Tokenizer.load(path)
