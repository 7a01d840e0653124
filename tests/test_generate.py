import pytest
import torch

from lmforge.config import GPTConfig
from lmforge.errors import LmforgeError
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
     ({"repetition_penalty": 0}, "--repetition-penalty")],
)  # fmt: skip
def test_meaningless_sampling_settings_are_refused(model_and_tokenizer, kwargs, flag):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(LmforgeError, match=flag):
        generate_text(model, tokenizer, "ab", 5, **kwargs)
    with pytest.raises(LmforgeError, match="--max-new-tokens"):
        generate_text(model, tokenizer, "ab", 0)
