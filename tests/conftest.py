"""Shared fixtures: a small synthetic corpus with learnable structure and a tiny training config."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ["LMFORGE_ENERGY"] = "estimate"  # codecarbon's 1.5 s start per run; tests/training/test_energy.py measures
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY = [
    "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_seq_len=16",
    "train.batch_size=4", "train.eval_every=5", "train.eval_steps=2", "train.warmup_steps=2",
    "train.log_every=1", "train.progress=false",
]  # fmt: skip


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Text a tiny model can learn: short repeated sentences with a few words varying."""
    rng = random.Random(0)
    words = ["red", "blue", "green", "cat", "dog", "bird"]
    lines = [f"the {rng.choice(words)} {rng.choice(words)} sat on the mat.\n" for _ in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


TINY_ENCODER = [
    "model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.max_seq_len=32", "model.dropout=0.0",
    "data.vocab_size=300", "data.val_fraction=0.1", "train.batch_size=16", "train.warmup_steps=10",
    "train.log_every=1", "train.eval_steps=8", "train.progress=false",
]  # fmt: skip


@pytest.fixture
def tiny_overrides(corpus: Path, tmp_path: Path) -> list[str]:
    return [*TINY, f"data.path={corpus}", f"train.out={tmp_path / 'run'}"]


def topic_documents(n_docs: int = 200, seed: int = 0) -> str:
    """Documents separated by blank lines; each keeps to one of 8 topics, whose words no other topic uses, so the
    words of a sentence follow from its document (MLM) and a sentence from another document stands out (NSP); the
    sentences of a document count up (one, two, ...), so swapped halves stand out too (SOP)."""
    rng = random.Random(seed)
    syllables = ["ba", "ko", "mi", "tu", "re", "sa", "lo", "ne", "pi", "du", "ga", "fe"]
    topics = []
    for k in range(8):
        words = [syllables[k] + syllables[(k + j + 1) % 12] + syllables[(3 * k + j) % 12] for j in range(9)]
        topics.append((words[:3], words[3:6], words[6:]))  # adjectives, nouns, verbs
    docs = []
    for _ in range(n_docs):
        adjectives, nouns, verbs = rng.choice(topics)
        sentences = [
            f"{number} the {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}."
            for number in ["one", "two", "three", "four", "five", "six"][: rng.randint(3, 6)]
        ]
        docs.append(" ".join(sentences))
    return "\n\n".join(docs) + "\n"


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    path = tmp_path / "documents.txt"
    path.write_text(topic_documents(), encoding="utf-8")
    return path


CHINESE_DOCUMENTS = [
    "今天天气很好。我们去公园散步吧！公园里有很多人。",
    "机器学习很有趣。自然语言处理是机器学习的一部分。我们学习语言模型。",
    "我喜欢喝茶。早上喝一杯茶很好。中国的茶很有名。",
]


@pytest.fixture(scope="module")
def mixed_documents(tmp_path_factory) -> Path:
    """English topic documents with Chinese ones among them, for tokenizers and fill-mask in both scripts."""
    path = tmp_path_factory.mktemp("mixed") / "mixed.txt"
    path.write_text(topic_documents(60) + "\n" + "\n\n".join(CHINESE_DOCUMENTS * 4) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one thread than on two threads of a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def aot_eager(monkeypatch):
    """--compile traced as Inductor would trace it, without building C++ (seconds, not a minute, per model)."""
    monkeypatch.setattr("lmforge.kernels.compiled.BACKEND", "aot_eager")


@pytest.fixture
def traced_only(monkeypatch):
    """--compile traced by Dynamo into graphs that run eagerly: for tests of what reaches the compiler and what comes
    back (tests/kernels/test_compiled.py traces the same layers as Inductor would, with aot_eager)."""
    monkeypatch.setattr("lmforge.kernels.compiled.BACKEND", "eager")


@pytest.fixture
def encoder_overrides(documents, tmp_path):
    return [*TINY_ENCODER, f"data.path={documents}", f"train.out={tmp_path / 'run'}"]
