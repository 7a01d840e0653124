"""Builders shared by several test modules (importable because pyproject puts tests/ on pytest's pythonpath)."""

import torch

from lmforge.config import GPTConfig
from lmforge.models import GPT


def tiny_gpt(seed=0, gpt2_init=False, **overrides):
    """A small GPT; unless gpt2_init, its weights are redrawn large, so attention is peaked and positions matter."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, n_layer=2, n_head=2, d_model=16, max_seq_len=16)
    model = GPT(GPTConfig(**{**cfg, **overrides})).eval()
    if not gpt2_init:
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return model


ENGLISH_WORDS = "the quick brown fox jumps over lazy dog cat sat on mat a red blue green bird sings loud".split()


def write_wordpiece_vocab(path):
    """A vocab.txt as BERT's: the five special tokens first, then words and ##pieces."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ENGLISH_WORDS, "##s", "##ing", ".", ","]
    (path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return len(words)


def write_bpe_vocab(path, special_tokens):
    """vocab.json + merges.txt of a small byte-level BPE trained on a few sentences; returns its size."""
    from tokenizers.implementations import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(ENGLISH_WORDS)] * 20, vocab_size=300, special_tokens=special_tokens)
    bpe.save_model(str(path))
    return bpe.get_vocab_size()


def padded_batch(vocab_size, b=3, t=12, low=5, seed=1):
    """Random ids (no special tokens below `low`) and a mask with one row padded from position 7."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab_size, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0
    return ids, mask
