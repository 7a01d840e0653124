from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
from helpers import tiny_t5

from lmforge.errors import LmforgeError
from lmforge.generation.beam import seq2seq_beam_search
from lmforge.generation.seq2seq import _decode, check_seq2seq, generate_seq2seq

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCES = ["the cat sat on the mat", "a dog", "the red bird sings loud on the green tree", "blue fox", "the mat"]


@pytest.fixture(scope="module")
def t5_and_tokenizer():
    """A random T5 of a few thousand parameters and a byte-level BPE with <pad> and </s>."""
    model, tokenizer = tiny_t5(SOURCES * 4, 270, 16)
    eos = tokenizer.special_id("sep")
    with torch.no_grad():  # large weights: peaked attention, varied outputs
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
        for i in range(tokenizer.vocab_size):  # zero logits (tied embeddings) but for words: outputs read as text
            if i != eos and not tokenizer.decode([i]).strip().isalpha():
                model.tok_emb.weight[i] = 0.0
        model.tok_emb.weight[eos] = 1.01 * model.tok_emb.weight[tokenizer.encode("T")[0]]  # some outputs end early
    return model, tokenizer


def text_of(tokenizer, row):
    """What generate_seq2seq makes of a row of generated ids (after decoder_start_id): up to eos, no specials."""
    row = row[: row.index(tokenizer.special_id("sep"))] if tokenizer.special_id("sep") in row else row
    return tokenizer.decode([t for t in row if t not in tokenizer.special_ids])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_equals_one_at_a_time_in_input_order(t5_and_tokenizer, num_beams):
    model, tokenizer = t5_and_tokenizer
    batched = generate_seq2seq(model, tokenizer, SOURCES, num_beams=num_beams, batch_size=3)
    alone = [generate_seq2seq(model, tokenizer, [s], num_beams=num_beams)[0] for s in SOURCES]
    assert batched == alone
    assert len(set(batched)) > 1  # the sources give different outputs, so a reordering would show
    assert generate_seq2seq(model, tokenizer, SOURCES[::-1], num_beams=num_beams, batch_size=2) == batched[::-1]


def test_greedy_and_beam_are_the_models_own_decoding(t5_and_tokenizer):
    model, tokenizer = t5_and_tokenizer
    ids = torch.tensor([tokenizer.encode(SOURCES[0]) + [model.cfg.eos_id]])
    greedy = model.generate(ids, max_new_tokens=15)[0, 1:].tolist()
    assert generate_seq2seq(model, tokenizer, SOURCES[:1], num_beams=1) == [text_of(tokenizer, greedy)]
    beam = seq2seq_beam_search(model, ids, torch.ones_like(ids), 4, 15, 1.0, False, 0)[0, 1:].tolist()
    assert generate_seq2seq(model, tokenizer, SOURCES[:1], num_beams=4) == [text_of(tokenizer, beam)]


def test_blank_sources_give_blank_outputs_without_the_model(t5_and_tokenizer):
    model, tokenizer = t5_and_tokenizer
    expected = generate_seq2seq(model, tokenizer, ["a dog"], num_beams=1)[0]
    assert generate_seq2seq(model, tokenizer, ["", "a dog", "  "], num_beams=1) == ["", expected, ""]
    with patch.object(model, "encode", side_effect=AssertionError("the model ran")):
        assert generate_seq2seq(model, tokenizer, ["", " \t"], num_beams=2) == ["", ""]


def test_a_long_source_is_cut_with_one_warning(t5_and_tokenizer, capsys):
    model, tokenizer = t5_and_tokenizer
    long = " ".join(SOURCES * 3)
    out = generate_seq2seq(model, tokenizer, [long, "a dog", long], num_beams=1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 of 3 sources were longer than the model's 16 tokens" in err
    assert out[0] == out[2]


def test_sampling_is_reproducible_with_a_seed(t5_and_tokenizer):
    model, tokenizer = t5_and_tokenizer
    options = dict(num_beams=1, temperature=2.0, top_k=50, top_p=0.95)
    first = generate_seq2seq(model, tokenizer, SOURCES, seed=7, **options)
    assert generate_seq2seq(model, tokenizer, SOURCES, seed=7, **options) == first
    assert any(generate_seq2seq(model, tokenizer, SOURCES, seed=s, **options) != first for s in range(3))
    assert first != generate_seq2seq(model, tokenizer, SOURCES, num_beams=1)  # not greedy


def test_streamed_pieces_join_to_the_text(t5_and_tokenizer):
    model, tokenizer = t5_and_tokenizer
    pieces = []
    (text,) = generate_seq2seq(model, tokenizer, [SOURCES[2]], num_beams=1, on_text=pieces.append)
    assert "".join(pieces) == text == generate_seq2seq(model, tokenizer, [SOURCES[2]], num_beams=1)[0]
    assert len(pieces) > 1 and all(pieces)
    with pytest.raises(LmforgeError, match="single source and num_beams 1"):
        generate_seq2seq(model, tokenizer, SOURCES[:2], num_beams=1, on_text=pieces.append)


def test_no_repeat_ngram_size_holds_in_greedy_decoding(t5_and_tokenizer):
    model, tokenizer = t5_and_tokenizer
    ids = torch.tensor([tokenizer.encode(SOURCES[1]) + [model.cfg.eos_id]])
    rows = torch.stack(list(_decode(model, ids, torch.ones_like(ids), 15, 0.0, None, None, 2, None)), 1)[0].tolist()
    pairs = [tuple(rows[i : i + 2]) for i in range(len(rows) - 1)]
    assert len(pairs) == len(set(pairs))


def test_bad_settings_are_one_clear_error(t5_and_tokenizer):
    model, tokenizer = t5_and_tokenizer
    with pytest.raises(LmforgeError, match="--max-new-tokens 16 is more than .* give at most 15"):
        generate_seq2seq(model, tokenizer, SOURCES, max_new_tokens=16)
    with pytest.raises(LmforgeError, match="--top-p"):
        generate_seq2seq(model, tokenizer, SOURCES, num_beams=1, temperature=1.0, top_p=1.5)
    with pytest.raises(LmforgeError, match="--batch-size"):
        generate_seq2seq(model, tokenizer, SOURCES, batch_size=0)


def test_only_an_encoder_decoder_is_accepted():
    gpt = SimpleNamespace(config=SimpleNamespace(family="gpt"), task=None, path="ckpt")
    with pytest.raises(LmforgeError, match="needs an encoder-decoder .t5 family. checkpoint, not a gpt one"):
        check_seq2seq(gpt)
    tuned = SimpleNamespace(config=SimpleNamespace(family="t5"), task=SimpleNamespace(task="classification"), path="c")
    with pytest.raises(LmforgeError, match="fine-tuned classification"):
        check_seq2seq(tuned)
