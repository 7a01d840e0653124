"""Beam search against transformers' generate(num_beams=K) on a random GPT-2 and a random T5 (v1.0, v1.1) with padded
sources: the same tokens, setting by setting."""

import pytest
import torch
from helpers import T5_SHAPE, T5_VERSIONS, t5_ours_from, t5_sources, write_bpe_vocab

from lmforge.checkpoint import from_pretrained
from lmforge.generation.beam import banned_ngrams, beam_search, seq2seq_beam_search
from lmforge.tokenizer import EOS

SETTINGS = [
    {"num_beams": 4, "max_new_tokens": 12},
    {"num_beams": 3, "max_new_tokens": 16, "length_penalty": 0.6, "no_repeat_ngram_size": 2},
    {"num_beams": 4, "max_new_tokens": 16, "early_stopping": True, "length_penalty": 2.0},
    {"num_beams": 2, "max_new_tokens": 10, "early_stopping": "never"},
]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    vocab = write_bpe_vocab(path, [EOS])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0)  # fmt: skip
    hf = GPT2LMHeadModel(config).eval()
    hf.save_pretrained(path, safe_serialization=True)
    model, tokenizer = from_pretrained(path)
    model.tokenizer = tokenizer
    return model, hf


def reference(hf, idx, eos_id, **settings):
    out = hf.generate(
        idx, attention_mask=torch.ones_like(idx), do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id,
        **settings,
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    "settings",
    SETTINGS,
)
def test_the_same_tokens_as_transformers(gpt2, settings):
    model, hf = gpt2
    torch.manual_seed(1)
    idx = torch.randint(1, model.cfg.vocab_size, (3, 5))
    free = reference(hf, idx, None, **settings)
    eos = int(free[0, 8])  # a token the search picks anyway, so hypotheses end early and the length rules matter
    ours = beam_search(model, idx, eos_id=eos, pad_id=eos, **settings)
    theirs = reference(hf, idx, eos, **settings)
    assert ours.tolist() == theirs.tolist()


def test_banned_ngrams_are_the_completions_of_a_seen_prefix():
    seqs = torch.tensor([[1, 2, 3, 1, 2], [5, 6, 7, 8, 9]])
    assert banned_ngrams(seqs, 3) == [[3], []]
    assert banned_ngrams(seqs, 2) == [[3], []]


def test_generate_text_and_the_cli_search_with_beams(gpt2, tmp_path, capsys):
    from lmforge.cli.main import main
    from lmforge.generation.text import generate_text

    model, _ = gpt2
    tokenizer = model.tokenizer
    prompt = "the cat"
    ids = torch.tensor([tokenizer.encode(prompt)])
    best = beam_search(model, ids, 3, 8, eos_id=tokenizer.eos_id, pad_id=tokenizer.eos_id)[0, ids.size(1) :].tolist()
    best = best[: best.index(tokenizer.eos_id)] if tokenizer.eos_id in best else best
    text = generate_text(model, tokenizer, prompt, 8, num_beams=3)
    assert text == tokenizer.decode(best)
    assert main(["generate", str(tmp_path / "missing"), "--num-beams", "0"]) == 2
    assert "--num-beams must be at least 1" in capsys.readouterr().err


T5_BEAM_SHAPE = T5_SHAPE | dict(num_decoder_layers=2, pad_token_id=0)  # generate() wants equal depths


@pytest.fixture(scope="module", params=T5_VERSIONS)
def t5(request):
    """A random transformers T5 (its generation cache wants as many decoder layers as encoder layers) and ours."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**T5_BEAM_SHAPE, **T5_VERSIONS[request.param]))
    torch.manual_seed(3)
    with torch.no_grad():  # larger weights than T5's init, so the hypotheses differ instead of repeating one token
        for name, p in hf.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0, 0.5)
    return t5_ours_from(hf), hf.eval()


@pytest.mark.parametrize(
    "settings",
    [
        *SETTINGS,
        {"num_beams": 5, "max_new_tokens": 14, "length_penalty": -0.5},
        {"num_beams": 3, "max_new_tokens": 10, "early_stopping": "never"},  # stopping a step early changes the best
    ],
)
def test_seq2seq_the_same_tokens_as_transformers_on_a_padded_batch(t5, settings):
    model, hf = t5
    ids, mask = t5_sources()

    def reference(eos):
        with torch.no_grad():
            return hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, eos_token_id=eos, **settings)

    free = reference(T5_BEAM_SHAPE["vocab_size"] - 1)
    eos = int(free[0, 4])  # a token the search picks anyway, so hypotheses end early and the length rules matter
    theirs = reference(eos)
    ours = seq2seq_beam_search(model, ids, mask, eos_id=eos, **settings)
    assert ours.tolist() == theirs.tolist()
    assert (theirs[:, :-1] == eos).any()  # some hypothesis ended before the length limit
    alone = [seq2seq_beam_search(model, ids[i : i + 1, : int(mask[i].sum())], eos_id=eos, **settings) for i in range(3)]
    assert all(a[0].tolist() == ours[i, : a.size(1)].tolist() for i, a in enumerate(alone))  # padding changes nothing
