"""GPT-2 from and to Hugging Face: the same logits on a padded batch, the same 50 greedy tokens, an exact round trip,
and the same tokens from vocab.json + merges.txt."""

import pytest
import torch
from helpers import padded_batch, tiny_gpt, write_bpe_vocab

from lmforge.checkpoint import convert_to_hf, from_pretrained, save_checkpoint, unique_state_dict
from lmforge.config import GPTConfig, RunConfig
from lmforge.errors import LmforgeError
from lmforge.tokenizer import EOS


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A random GPT2LMHeadModel saved with safetensors, with a byte-level BPE vocabulary whose <|endoftext|> is the
    model's eos."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("gpt2")
    vocab = write_bpe_vocab(path, [EOS])
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=96, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0)  # fmt: skip
    hf = GPT2LMHeadModel(config).eval()
    hf.save_pretrained(path, safe_serialization=True)
    return path, hf


def test_logits_match_on_a_padded_batch(gpt2_dir):
    path, hf = gpt2_dir
    model, _ = from_pretrained(path)
    ids, mask = padded_batch(model.cfg.vocab_size)
    with torch.no_grad():
        ours, ref = model(ids, mask), hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (ours[real] - ref[real]).abs().max() < 1e-4


def test_greedy_generation_gives_the_same_50_tokens(gpt2_dir):
    path, hf = gpt2_dir
    model, tokenizer = from_pretrained(path)
    prompt = torch.tensor([tokenizer.encode("the quick brown fox")])
    ours = model.generate(prompt, 50, greedy=True)
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=50,
                          min_new_tokens=50, pad_token_id=0, eos_token_id=None)  # fmt: skip
    assert ours.shape == ref.shape == (1, prompt.size(1) + 50)
    assert torch.equal(ours, ref)


def test_tokenizer_from_vocab_and_merges_matches_transformers(gpt2_dir):
    from transformers import AutoTokenizer

    path, _ = gpt2_dir
    _, tokenizer = from_pretrained(path)
    ref = AutoTokenizer.from_pretrained(path)
    for text in ["the quick brown fox", " jumps over the lazy dog.", "unseen wörds 中文<|endoftext|>"]:
        assert tokenizer.encode(text) == ref(text)["input_ids"]
    assert tokenizer.eos_id == 0


def test_lmforge_to_hf_to_lmforge_is_exact_and_transformers_agrees(tmp_path, gpt2_dir):
    from transformers import AutoModelForCausalLM

    _, tokenizer = from_pretrained(gpt2_dir[0])
    model = tiny_gpt(vocab_size=tokenizer.vocab_size, max_seq_len=32, d_model=32, n_head=4)
    ckpt = save_checkpoint(tmp_path / "run", 1, model, RunConfig("gpt", model.cfg), tokenizer)
    out = convert_to_hf(ckpt, tmp_path / "hf")
    back, _ = from_pretrained(out)
    before, after = unique_state_dict(model), unique_state_dict(back)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids, mask = padded_batch(model.cfg.vocab_size)
    with torch.no_grad():
        ours, ref = model(ids, mask), hf(input_ids=ids, attention_mask=mask).logits
    assert (ours[mask.bool()] - ref[mask.bool()]).abs().max() < 1e-4


def test_a_gpt_gpt2_cannot_hold_is_refused_by_name(tmp_path, gpt2_dir):
    _, tokenizer = from_pretrained(gpt2_dir[0])
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=16,
                    position="rotary")  # fmt: skip
    ckpt = save_checkpoint(tmp_path / "run", 1, tiny_gpt(**vars(cfg)), RunConfig("gpt", cfg), tokenizer)
    with pytest.raises(LmforgeError, match="position rotary"):
        convert_to_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
