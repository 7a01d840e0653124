import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers import models

from lmforge.errors import LmforgeError
from lmforge.tokenizer import (
    ENCODER_BPE_SPECIALS,
    EOS,
    MAX_VOCAB_SIZE,
    WORDPIECE_SPECIALS,
    Tokenizer,
    min_vocab_size,
)

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


def test_min_vocab_size_is_what_the_trainers_give_at_the_least():
    """Asked for less, a trainer still keeps its alphabet and specials: 256 bytes + specials for a byte-level BPE."""
    assert min_vocab_size("bpe") == 257 and min_vocab_size("bpe", encoder=True) == 256 + len(ENCODER_BPE_SPECIALS)
    assert min_vocab_size("wordpiece") == len(WORDPIECE_SPECIALS) + 1
    assert Tokenizer.train_bpe(TEXTS, min_vocab_size("bpe")).vocab_size >= min_vocab_size("bpe")
    assert Tokenizer.train_wordpiece(["a"], min_vocab_size("wordpiece")).vocab_size == min_vocab_size("wordpiece")
    with pytest.raises(ValueError, match="char"):
        min_vocab_size("char")


@pytest.mark.parametrize(
    "train, size, message",
    [
        (Tokenizer.train_wordpiece, 5, "too small for WordPiece .*at least 6"),
        (Tokenizer.train_wordpiece, MAX_VOCAB_SIZE + 1, f"too large: give at most {MAX_VOCAB_SIZE}"),
        (Tokenizer.train_bpe, MAX_VOCAB_SIZE + 1, f"too large: give at most {MAX_VOCAB_SIZE}"),
        (Tokenizer.train_bpe, -1, "too small for byte-level BPE"),
    ],
)
def test_vocab_size_out_of_range_is_one_line_naming_the_tokenizer(train, size, message):
    with pytest.raises(LmforgeError, match=message) as e:
        train(TEXTS, size)
    assert "\n" not in str(e.value)


def test_the_largest_vocab_size_trains():
    assert Tokenizer.train_wordpiece(TEXTS, MAX_VOCAB_SIZE).vocab_size < 1000  # no merges left long before


def test_ctrl_c_stops_training_at_once():
    """The Rust trainer holds no Python frame, so KeyboardInterrupt used to wait the whole training (here ~6 s)."""
    script = textwrap.dedent("""
        import random, signal, sys
        # Ctrl-C as a terminal delivers it, whatever the test process passed down (an ignored or blocked SIGINT
        # is inherited across exec: the child then trained to the end, seen twice in full-suite runs)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from lmforge.tokenizer import Tokenizer
        rng = random.Random(0)
        words = [f"{rng.getrandbits(48):x}" for _ in range(1_000_000)]
        texts = [" ".join(words[i : i + 1000]) for i in range(0, len(words), 1000)]
        print("training", flush=True)
        try:
            Tokenizer.train_bpe(texts, 300_000)
        except KeyboardInterrupt:
            sys.exit(3)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "training\n"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        assert proc.wait(timeout=60) == 3
        assert time.monotonic() - interrupted < 2
    finally:
        proc.kill()
        proc.stdout.close()


def test_training_errors_reach_the_caller():
    def texts():
        yield "fine"
        raise RuntimeError("a broken corpus")

    with pytest.raises(RuntimeError, match="broken corpus"):
        Tokenizer.train_bpe(texts(), 300)


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


def test_unigram_loads_and_marks_word_starts(tmp_path):
    """ALBERT's SentencePiece vocabulary: a piece without the leading ▁ continues its word."""
    path = tmp_path / "unigram.json"
    vocab = [("<unk>", 0.0), ("▁a", -1.0), ("b", -2.0), ("▁", -3.0)]
    tokenizers.Tokenizer(models.Unigram(vocab, unk_id=0)).save(str(path))
    tok = Tokenizer.load(path)
    assert tok.kind == "unigram" and tok.continues_word() == [False, False, True, False]


ENGLISH = "The quick brown fox jumps over the lazy dog. Running, jumped, jumping! Café naïve résumé.\n"
CHINESE = "中文分词测试：你好，世界。机器学习和自然语言处理。\n"
MIXED = "Mixed 中英文 text: BERT模型 learns 语言.\n"


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return Tokenizer.train_wordpiece([ENGLISH, CHINESE, MIXED] * 20, vocab_size=300)


def pieces(tok, text):
    return [tok.backend.id_to_token(i) for i in tok.encode(text)]


def test_wordpiece_specials_take_the_first_ids_and_have_roles(wordpiece):
    assert wordpiece.kind == "wordpiece"
    assert [wordpiece.backend.id_to_token(i) for i in range(5)] == list(WORDPIECE_SPECIALS)
    roles = (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id)
    assert roles == (0, 1, 2, 3, 4) and wordpiece.special_ids == [0, 1, 2, 3, 4]
    assert wordpiece.eos_id is None
    assert pieces(wordpiece, "the [MASK] fox") == ["the", "[MASK]", "fox"]  # typed as text, read as the token


def test_wordpiece_english_lowercases_strips_accents_and_splits_punctuation(wordpiece):
    assert pieces(wordpiece, "The Quick, brown FOX!") == ["the", "quick", ",", "brown", "fox", "!"]
    assert pieces(wordpiece, "Café") == pieces(wordpiece, "cafe")
    assert wordpiece.decode(wordpiece.encode("Running, jumped.")) == "running, jumped."
    ids = wordpiece.encode("lazydog")  # not a word of the corpus: subwords, each later one ##-continued
    assert len(ids) > 1 and all(wordpiece.backend.id_to_token(i).startswith("##") for i in ids[1:])
    assert wordpiece.encode("ж") == [wordpiece.unk_id]  # a character never seen


def test_wordpiece_chinese_is_one_token_per_character(wordpiece):
    text = "机器学习和自然语言处理"
    assert pieces(wordpiece, text) == list(text)
    assert pieces(wordpiece, "你好，世界。") == ["你", "好", "，", "世", "界", "。"]


def test_wordpiece_mixed_text_splits_cjk_out_of_latin_words(wordpiece):
    assert pieces(wordpiece, "BERT模型 learns 语言") == ["bert", "模", "型", "learns", "语", "言"]


def test_wordpiece_casing_and_accents_are_options():
    cased = Tokenizer.train_wordpiece([ENGLISH] * 20, vocab_size=200, lowercase=False, strip_accents=False)
    assert pieces(cased, "The") == ["The"] and "the" in pieces(cased, "the")
    assert cased.decode(cased.encode("Café")) == "Café"


def test_wordpiece_save_load(tmp_path, wordpiece):
    wordpiece.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.kind == "wordpiece" and loaded.mask_id == wordpiece.mask_id
    assert loaded.encode(MIXED + CHINESE) == wordpiece.encode(MIXED + CHINESE)


def test_encoder_bpe_has_roberta_specials_and_a_mask_that_takes_the_space():
    tok = Tokenizer.train_bpe(TEXTS * 20, vocab_size=400, special_tokens=ENCODER_BPE_SPECIALS)
    assert [tok.backend.id_to_token(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.eos_id is None
    assert tok.encode("the <mask>") == tok.encode("the") + [tok.mask_id]
    text = "Hello, world! 中文 👨‍👩‍👧"
    assert tok.decode(tok.encode(text)) == text


def test_decoder_tokenizers_have_no_encoder_roles(bpe, char):
    assert bpe.mask_id is bpe.cls_id is bpe.sep_id is bpe.pad_id is None
    assert bpe.special_ids == [bpe.eos_id]
    assert char.mask_id is None and char.unk_id == char.vocab_size - 1


def test_decode_knows_tokens_added_after_it_was_made(bpe):
    """decode's range check keeps the vocabulary size it read (reading it costs more than a streamed token's
    decoding) and reads it again only for an id past it: an added token decodes, an id past it still fails."""
    tok = Tokenizer(tokenizers.Tokenizer.from_str(bpe.backend.to_str()))
    size = tok.vocab_size
    with pytest.raises(LmforgeError, match=f"token id {size} is out of range"):
        tok.decode([size])
    tok.backend.add_tokens(["<domain-term>"])
    assert tok.decode([size]) == "<domain-term>"
    with pytest.raises(LmforgeError, match=f"token id {size + 1} is out of range .*ids 0 to {size}\\)"):
        tok.decode([5, size + 1])
    with pytest.raises(LmforgeError, match="token id -1 is out of range"):
        tok.decode([-1, 5])
