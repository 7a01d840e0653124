import functools
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.config import GPTConfig
from lmforge.errors import LmforgeError
from lmforge.generation.decoding import generate
from lmforge.generation.text import encode_prompt, generate_text
from lmforge.models import GPT
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = Tokenizer.train_char(["abcdefgh \n"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=32)).eval()
    return model, tokenizer


def test_streamed_pieces_add_up_to_the_result(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    pieces = []
    text = generate_text(model, tokenizer, "abc", 40, on_text=pieces.append, seed=3)
    assert "".join(pieces) == text and len(text) > 0


def test_stop_string_cuts_and_is_never_streamed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    full = generate_text(model, tokenizer, "abc", 60, seed=5)
    stop = full[10:12]
    pieces = []
    cut = generate_text(model, tokenizer, "abc", 60, stop=[stop], on_text=pieces.append, seed=5)
    assert cut == full[: full.find(stop)]
    assert "".join(pieces) == cut


def test_greedy_is_deterministic_and_seed_reproduces(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    greedy = generate_text(model, tokenizer, "ab", 20, greedy=True)
    assert greedy == generate_text(model, tokenizer, "ab", 20, temperature=0)
    assert generate_text(model, tokenizer, "ab", 20, seed=1) == generate_text(model, tokenizer, "ab", 20, seed=1)


def test_prompt_longer_than_context_is_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(LmforgeError, match="context is 32"):
        encode_prompt(tokenizer, "a" * 40, 32)
    assert encode_prompt(tokenizer, "", 32) == tokenizer.encode("\n")


@pytest.mark.parametrize(
    "kwargs, flag",
    [({"temperature": -1}, "--temperature"), ({"top_p": 1.5}, "--top-p"), ({"top_k": 0}, "--top-k"),
     ({"repetition_penalty": 0}, "--repetition-penalty"), ({"temperature": float("nan")}, "--temperature"),
     ({"temperature": float("inf")}, "--temperature"), ({"top_p": float("nan")}, "--top-p"),
     ({"repetition_penalty": float("nan")}, "--repetition-penalty"),
     ({"repetition_penalty": float("inf")}, "--repetition-penalty")],
)  # fmt: skip
def test_meaningless_sampling_settings_are_refused(model_and_tokenizer, kwargs, flag):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(LmforgeError, match=flag):
        generate_text(model, tokenizer, "ab", 5, **kwargs)
    with pytest.raises(LmforgeError, match="--max-new-tokens"):
        generate_text(model, tokenizer, "ab", 0)


BPE_TEXTS = ["Hello, world! 中文分词测试：你好，世界。emoji 🎉🎉 party, русский.\n", "stop here. The end.\n"]


@functools.cache
def bpe_model_and_tokenizer():
    """A byte-level BPE without <|endoftext|> (nothing ends generation early) and a GPT over its vocabulary."""
    tokenizer = Tokenizer.train_bpe(BPE_TEXTS * 20, vocab_size=300, special_tokens=())
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=64)).eval()
    return model, tokenizer


def test_each_token_decodes_a_short_window_and_the_text_is_the_tokens_decoded(monkeypatch):
    model, tokenizer = bpe_model_and_tokenizer()
    prompt = tokenizer.encode("Hello")
    ids = generate(model, torch.tensor([prompt]), 300, seed=4)[0, len(prompt) :].tolist()
    decode, calls = tokenizer.decode, []
    monkeypatch.setattr(tokenizer, "decode", lambda window: calls.append(len(window)) or decode(window))
    pieces = []
    text = generate_text(model, tokenizer, "Hello", 300, on_text=pieces.append, seed=4)
    assert text == "".join(pieces) == decode(ids) and "\ufffd" in text  # broken UTF-8 too
    assert max(calls) <= 16 and len(calls) <= 2 * 300 + 1


def quadratic_generate_text(tokenizer, tokens, stop, eos_id=None):
    """generate_text's text before incremental detokenization: decode every token so far at each step."""
    new, text = [], ""
    for token in tokens:
        if token == eos_id:
            break
        new.append(token)
        text = tokenizer.decode(new)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=None)
        if cut is not None:
            return text[:cut]
    return text


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_text_is_that_of_decoding_everything_at_each_step(data):
    """Any tokens, stop strings (without U+FFFD, which an unfinished character only stands in for) and EOS. The
    pieces may come sooner than before (the text before an unfinished character), never past a cut."""
    model, tokenizer = bpe_model_and_tokenizer()
    tokens = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=60))
    full = tokenizer.decode(tokens)
    pieces = st.integers(0, len(full)).flatmap(lambda i: st.integers(1, 6).map(lambda n: full[i : i + n]))
    stop = data.draw(st.lists(pieces | st.text(min_size=1, max_size=4), max_size=3))
    stop = [s for s in stop if s and "\ufffd" not in s]
    eos_id = data.draw(st.none() | st.sampled_from(tokens or [0]))
    streamed = []
    with patch("lmforge.generation.text.stream", lambda *a, **k: (torch.tensor([t]) for t in tokens)):
        with patch.object(Tokenizer, "eos_id", eos_id):
            text = generate_text(model, tokenizer, "Hello", 60, stop=stop, on_text=streamed.append)
    assert text == quadratic_generate_text(tokenizer, tokens, stop, eos_id) == "".join(streamed) and all(streamed)


def test_xlnet_greedy_generation_matches_transformers_and_runs_from_the_cli(tmp_path, capsys):
    """An XLNet saved by transformers, loaded by lmforge: greedy tokens equal transformers' generate (no mems, each
    next token predicted from the whole sequence through the permutation mask), and lmforge generate prints them."""
    import transformers
    from helpers import write_xlnet_tokenizer

    from lmforge.checkpoint.loader import from_pretrained
    from lmforge.cli.main import main
    from lmforge.generation.text import _tokens

    write_xlnet_tokenizer(tmp_path)
    vocab = Tokenizer.load(tmp_path / "tokenizer.json").vocab_size
    torch.manual_seed(0)
    shape = dict(vocab_size=vocab, d_model=32, n_layer=2, n_head=4, d_inner=37, pad_token_id=5, eos_token_id=2)
    hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(**shape)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0, 0.5)
    hf.save_pretrained(tmp_path)
    model, tokenizer = from_pretrained(tmp_path)
    ids = torch.tensor([tokenizer.encode("the cat sat on")])
    ref = hf.generate(input_ids=ids, do_sample=False, num_beams=1, max_new_tokens=8, use_mems=False)
    ours = list(_tokens(model, ids, 8, None, greedy=True))
    assert ours == ref[0, ids.size(1) :].tolist()
    assert main(["generate", str(tmp_path), "--prompt", "the cat sat on", "--greedy", "--max-new-tokens", "8",
                 "--no-stream"]) in (0, None)  # fmt: skip
    assert capsys.readouterr().out.strip() == tokenizer.decode(ref[0].tolist()).strip()
    with pytest.raises(LmforgeError, match="--num-beams"):
        generate_text(model, tokenizer, "the cat", 4, num_beams=2)
