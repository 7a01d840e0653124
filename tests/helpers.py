"""Builders shared by several test modules (importable because pyproject puts tests/ on pytest's pythonpath)."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import torch

from lmforge.config import GPTConfig
from lmforge.models import GPT


def onednn_or_skip():
    """oneDNN's linear (torch.ops.mkldnn._linear_pointwise), or a skip where this build of torch has none."""
    import pytest

    try:
        if torch.backends.mkldnn.is_available():
            return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        pass
    pytest.skip("this build of torch has no oneDNN linear")


def tiny_gpt(seed=0, gpt2_init=False, **overrides):
    """A small GPT; unless gpt2_init, its weights are redrawn large, so attention is peaked and positions matter."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, n_layer=2, n_head=2, d_model=16, max_seq_len=16)
    model = GPT(GPTConfig(**{**cfg, **overrides})).eval()
    if not gpt2_init:
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return model


WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "plot", "acting", "very"]
PEOPLE, PLACES = ["alice", "bob", "carol"], ["paris", "rome", "oslo"]


def sentiment_csvs(folder, n_train: int, n_dev: int) -> None:
    """folder/train.csv and folder/dev.csv of sentiment_rows (text,label)."""
    for name, n, seed in (("train.csv", n_train, 0), ("dev.csv", n_dev, 1)):
        (folder / name).write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in sentiment_rows(n, seed)))


def sentiment_rows(n, seed=0):
    """(text, label) pairs a tiny model can learn: the label is pos when the text holds a positive word."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        word = rng.choice(WORDS[:3] if positive else WORDS[3:6])
        filler = rng.choices(WORDS[6:], k=rng.randint(2, 6))
        filler.insert(rng.randint(0, len(filler)), word)
        rows.append((" ".join(filler), "pos" if positive else "neg"))
    return rows


def ner_sentences(n, seed=0):
    """(words, IOB2 tags): people and places (a place sometimes two words) among filler words."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 7)):
            r = rng.random()
            if r < 0.2:
                words.append(rng.choice(PEOPLE).title())
                tags.append("B-PER")
            elif r < 0.35:
                words += [rng.choice(PLACES).title(), "city"]
                tags += ["B-LOC", "I-LOC"]
            else:
                words.append(rng.choice(WORDS[6:]))
                tags.append("O")
        out.append((words, tags))
    return out


def tiny_checkpoint(out, family="bert", seed=0, **overrides):
    """An lmforge checkpoint of a tiny untrained model with a tokenizer trained on the synthetic vocabulary."""
    from lmforge.checkpoint import save_checkpoint
    from lmforge.config import BertConfig, DataConfig, RunConfig
    from lmforge.models import MODELS
    from lmforge.tokenizer import Tokenizer

    texts = [t for t, _ in sentiment_rows(200)] + [" ".join(w) for w, _ in ner_sentences(200)]
    if family == "bert":
        tokenizer = Tokenizer.train_wordpiece(texts, 200)
        model_cfg = BertConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=32)
    elif family == "xlnet":  # a Unigram with the encoder's special tokens, as xlnet-small pretrains with
        from lmforge.config.models import XLNetConfig

        tokenizer = Tokenizer.train_unigram(texts, 200, encoder=True)
        model_cfg = XLNetConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=32)
    else:
        tokenizer = Tokenizer.train_bpe(texts, 300)
        model_cfg = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=32)
    for key, value in overrides.items():
        setattr(model_cfg, key, value)
    torch.manual_seed(seed)
    cfg = RunConfig(
        family=family,
        model=model_cfg,
        data=DataConfig(tokenizer={"bert": "wordpiece", "xlnet": "unigram"}.get(family, "bpe")),
    )
    return save_checkpoint(out, 1, MODELS[family](model_cfg), cfg, tokenizer)


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


FAST = dict(batch_size=16, lr=3e-3, device="cpu", progress=False, seed=0)  # fine-tuning a tiny model in seconds


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def jsonl_splits(d, make, families=("bert",)):
    """train.jsonl (make(240)) and dev.jsonl (make(60, seed=1)) in d, and a tiny checkpoint per family."""
    write_jsonl(d / "train.jsonl", make(240))
    write_jsonl(d / "dev.jsonl", make(60, 1))
    for family in families:
        tiny_checkpoint(d / family, family)
    return d


def read_examples(path, task: str, columns=None, labelled: bool = True) -> list:
    """A task's examples of a file, as fine-tuning reads them."""
    from lmforge.data.labelled import Columns
    from lmforge.tasks import get_task

    return get_task(task).read(Path(path), columns or Columns(), labelled)


def discover_labels(examples: list, task: str, path) -> list[str]:
    from lmforge.tasks import get_task

    return get_task(task).labels(examples, path)


T5_SHAPE = dict(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                decoder_start_token_id=0)  # fmt: skip
T5_VERSIONS = {
    "v1.0": dict(feed_forward_proj="relu"),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def t5_ours_from(hf):
    """Our T5 with a transformers T5's weights."""
    from lmforge.interop.hf_t5 import t5_config, t5_to_ours
    from lmforge.models.t5 import T5

    cfg = t5_config(hf.config.to_dict())
    model = T5(cfg).eval()
    model.load_state_dict(t5_to_ours(cfg, hf.state_dict(), model.state_dict()))
    return model


def t5_sources(vocab_size: int = T5_SHAPE["vocab_size"]):
    """Three source rows, two of them padded (pad id 0), and their attention mask."""
    torch.manual_seed(1)
    ids = torch.randint(2, vocab_size, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[2, 4:] = 0, 0
    return ids.masked_fill(mask == 0, 0), mask


def tiny_t5(texts: list[str], vocab_size: int, max_seq_len: int):
    """A random T5 of a few thousand parameters (eval mode, seed 0) and a byte-level BPE with <pad> and </s>
    trained on texts, its ids set in the model's config as T5 sets them."""
    from lmforge.config import T5Config
    from lmforge.models.t5 import T5
    from lmforge.tokenizer import ENCODER_BPE_SPECIALS, Tokenizer

    tokenizer = Tokenizer.train_bpe(texts, vocab_size, special_tokens=ENCODER_BPE_SPECIALS)
    pad, eos = tokenizer.special_id("pad"), tokenizer.special_id("sep")
    cfg = T5Config(
        vocab_size=tokenizer.vocab_size, d_model=16, d_kv=4, d_ff=24, n_layer=1, n_head=2, max_seq_len=max_seq_len,
        relative_attention_num_buckets=8, relative_attention_max_distance=max_seq_len, dropout=0.0,
        pad_id=pad, eos_id=eos, decoder_start_id=pad,
    )  # fmt: skip
    torch.manual_seed(0)
    return T5(cfg).eval(), tokenizer


LETTERS = "abcdefghij"
TINY = [
    "model.n_layer=2", "model.n_decoder_layer=2", "model.d_model=64", "model.d_kv=16", "model.d_ff=256",
    "model.dropout=0.0", "model.max_seq_len=32", "data.vocab_size=300", "train.batch_tokens=0", "train.batch_size=64",
    "train.lr=3e-3", "train.warmup_steps=50", "train.schedule=cosine", "train.min_lr=1e-4", "train.eval_every=100",
    "train.eval_steps=5", "train.label_smoothing=0.0",
]  # fmt: skip


def write_reversal(folder, n_train=4000, n_val=200, seed=0):
    """Sequences of 3-8 letters and the same letters reversed, as train.src/train.tgt and val.src/val.tgt."""
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        words = [[rng.choice(LETTERS) for _ in range(rng.randint(3, 8))] for _ in range(n)]
        (folder / f"{split}.src").write_text("".join(" ".join(w) + "\n" for w in words), encoding="utf-8")
        (folder / f"{split}.tgt").write_text("".join(" ".join(w[::-1]) + "\n" for w in words), encoding="utf-8")
    return folder


def train_cli(data, out, *extra, steps=6):
    """lmforge train --config transformer-mt, TINY-sized, on the src -> tgt pairs of data."""
    from lmforge.cli.main import main

    sets = [x for kv in TINY for x in ("--set", kv)]
    argv = ["train", "--config", "transformer-mt", "--data", str(data), "--source", "src", "--target", "tgt",
            "--out", str(out), "--max-steps", str(steps), "--no-progress", *sets, *extra]  # fmt: skip
    return main(argv)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """An lmforge server (lmforge.serve) in a thread of this process, on a free loopback port, for the length of a
    with block."""

    def __init__(self, path, load_options=None, **options):
        import uvicorn

        from lmforge.checkpoint.loader import load
        from lmforge.serve.app import create_app

        self.loaded = load(path, **(load_options or {}))
        self.app = create_app(self.loaded, "tiny", **options)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def client(self, key: str = "none", timeout: float = 30):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=timeout)


XLNET_SPECIALS = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]


def write_xlnet_tokenizer(path) -> None:
    """A SentencePiece-style Unigram tokenizer.json in XLNet's layout (its special tokens first, A <sep> <cls>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [(s, 0.0) for s in XLNET_SPECIALS] + [("▁" + w, -2.0) for w in "the a cat dog sat on mat".split()]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0))
    backend.add_special_tokens(XLNET_SPECIALS)
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A:0 <sep>:0 <cls>:2",
        pair="$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2",
        special_tokens=[("<sep>", 4), ("<cls>", 3)],
    )
    backend.save(str(path / "tokenizer.json"))
