"""MLM masking statistics, sentence pairs with NSP/SOP labels, dynamic masking and exact resume of the sampler."""

import numpy as np
import pytest
import tokenizers
import torch
from tokenizers import models

from lmforge.data import IGNORE, DocumentSplit, PretrainingSampler, mask_tokens
from lmforge.errors import LmforgeError
from lmforge.tokenizer import WORDPIECE_SPECIALS, Tokenizer

PAD, UNK, CLS, SEP, MASK = range(5)
WORDS_PER_DOC = 100  # document d's tokens are 5 + 100 d + j, j = 0, 1, ...: a token tells its document and place


def synthetic_tokenizer(n_words: int, continued: int = 0) -> Tokenizer:
    """A WordPiece vocabulary of the five specials, n_words words w0.. and `continued` pieces ##c0.."""
    vocab = [*WORDPIECE_SPECIALS, *(f"w{i}" for i in range(n_words)), *(f"##c{i}" for i in range(continued))]
    return Tokenizer(tokenizers.Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")))


def synthetic_split(n_docs: int, seed: int = 0) -> DocumentSplit:
    """Documents of 2-6 sentences of 1-9 tokens; token ids count up within a document from 5 + 100 * doc."""
    rng = np.random.default_rng(seed)
    tokens, sentences, documents = [], [0], [0]
    for d in range(n_docs):
        lengths = rng.integers(1, 10, size=rng.integers(2, 7))
        tokens += list(range(5 + WORDS_PER_DOC * d, 5 + WORDS_PER_DOC * d + lengths.sum()))
        sentences += list(sentences[-1] + np.cumsum(lengths))
        documents.append(len(sentences) - 1)
    return DocumentSplit(np.array(tokens, dtype=np.uint16), np.array(sentences), np.array(documents))


def segments(batch, i):
    """Sentence A and B of example i, without [CLS] and [SEP]; masked positions show their original token."""
    original = torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])[i]
    real = batch["attention_mask"][i]
    types = batch["token_type_ids"][i]
    a = original[(types == 0) & real][1:-1]
    b = original[(types == 1) & real][:-1]
    return a.tolist(), b.tolist()


def test_masking_statistics_on_100k_tokens():
    g = torch.Generator().manual_seed(0)
    vocab = 1000
    ids = torch.randint(5, vocab, (100, 1000), generator=g)
    ids[:, 0], ids[:, 500], ids[:, -50:] = CLS, SEP, PAD  # special positions, never to be selected
    candidates = (ids != CLS) & (ids != SEP) & (ids != PAD)
    replacements = torch.arange(5, vocab)
    inputs, labels = mask_tokens(ids, candidates, MASK, replacements, g, probability=0.15)
    selected = labels != IGNORE
    assert not selected[~candidates].any()
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(inputs[~selected], ids[~selected])
    share = selected.sum().item() / candidates.sum().item()
    assert abs(share - 0.15) < 0.005
    n = selected.sum().item()
    masked = (inputs[selected] == MASK).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n
    randomized = ((inputs[selected] != MASK) & (inputs[selected] != ids[selected])).sum().item() / n
    assert abs(masked - 0.8) < 0.015 and abs(kept - 0.1) < 0.015 and abs(randomized - 0.1) < 0.015
    assert inputs[selected & (inputs != MASK)].min() >= 5  # a random token is never a special one


def test_masking_draws_anew_each_time():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (4, 64), generator=g)
    first = mask_tokens(ids, ids > 4, MASK, torch.arange(5, 100), g)[1]
    second = mask_tokens(ids, ids > 4, MASK, torch.arange(5, 100), g)[1]
    assert not torch.equal(first != IGNORE, second != IGNORE)


def test_whole_word_masking_selects_whole_words():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (50, 200), generator=g)
    word_starts = torch.rand(50, 200, generator=g) < 0.4  # words of 2.5 tokens on average
    word_starts[:, 0] = True
    labels = mask_tokens(ids, torch.ones_like(ids, dtype=torch.bool), MASK, torch.arange(5, 100), g, 0.15,
                         word_starts)[1]  # fmt: skip
    selected = labels != IGNORE
    word = word_starts.cumsum(dim=1)
    for row in range(50):
        for w in word[row].unique():
            in_word = selected[row][word[row] == w]
            assert in_word.all() or not in_word.any()
    assert abs(selected.float().mean().item() - 0.15) < 0.02


def test_wordpiece_continuations_stay_with_their_word():
    tok = synthetic_tokenizer(50, continued=50)
    cont = 5 + 50  # the first ##c piece
    tokens = np.array([5 + i % 50 if i % 3 == 0 else cont + i % 50 for i in range(3000)], dtype=np.uint16)
    split = DocumentSplit(tokens, np.arange(0, 3001, 30), np.array([0, 50, 100]))
    batch = PretrainingSampler(split, tok, 64, 32, seed=0, whole_word_masking=True).next()
    ids, selected = batch["input_ids"], batch["labels"] != IGNORE
    original = torch.where(selected, batch["labels"], ids)
    special = original < 5
    starts = (original < cont) | torch.nn.functional.pad(special[:, :-1], (1, 0))  # after [SEP], a piece starts one
    for row in range(64):
        word = starts[row].cumsum(0)
        for w in word.unique():
            in_word = selected[row][(word == w) & ~special[row]]
            assert in_word.all() or not in_word.any()
    assert selected.any()


@pytest.mark.parametrize("objective", ["nsp", "sop"])
def test_pairs_are_well_formed(objective):
    tok = synthetic_tokenizer(2000)
    batch = PretrainingSampler(synthetic_split(20), tok, 64, 24, seed=0, sentence_objective=objective).next()
    ids, types, real = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    assert ids.shape == types.shape == real.shape == batch["labels"].shape == (64, 24)
    assert batch["sentence_label"].shape == (64,)
    original = torch.where(batch["labels"] != IGNORE, batch["labels"], ids)
    for i in range(64):
        n = int(real[i].sum())
        assert torch.equal(real[i], torch.arange(24) < n) and (original[i, n:] == PAD).all()
        seps = (original[i, :n] == SEP).nonzero().flatten().tolist()
        assert original[i, 0] == CLS and len(seps) == 2 and seps[1] == n - 1
        assert torch.equal(types[i], ((torch.arange(24) > seps[0]) & (torch.arange(24) < n)).long())
        a, b = segments(batch, i)
        assert a and b and len(a) + len(b) + 3 <= 24


def test_nsp_labels_are_balanced_and_negatives_come_from_other_documents():
    sampler = PretrainingSampler(synthetic_split(30), synthetic_tokenizer(3000), 200, 32, seed=1)
    labels = []
    for _ in range(20):
        batch = sampler.next()
        for i, label in enumerate(batch["sentence_label"].tolist()):
            a, b = segments(batch, i)
            doc_a, doc_b = {(t - 5) // WORDS_PER_DOC for t in a}, {(t - 5) // WORDS_PER_DOC for t in b}
            assert len(doc_a) == len(doc_b) == 1
            if label:
                assert doc_a != doc_b
            else:
                assert doc_a == doc_b and b[0] == a[-1] + 1  # B goes on where A stops
            labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 0.03


def test_sop_labels_are_balanced_and_negatives_are_swapped():
    sampler = PretrainingSampler(synthetic_split(30), synthetic_tokenizer(3000), 200, 32, seed=2,
                                 sentence_objective="sop")  # fmt: skip
    labels = []
    for _ in range(20):
        batch = sampler.next()
        for i, label in enumerate(batch["sentence_label"].tolist()):
            a, b = segments(batch, i)
            assert (a[0] == b[-1] + 1) if label else (b[0] == a[-1] + 1)  # always one text, maybe swapped
            labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 0.03


def test_no_sentence_objective_gives_one_segment():
    sampler = PretrainingSampler(synthetic_split(5), synthetic_tokenizer(600), 16, 20, 0, sentence_objective="none")
    batch = sampler.next()
    assert "sentence_label" not in batch and (batch["token_type_ids"] == 0).all()
    original = torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])
    for row, real in zip(original, batch["attention_mask"], strict=True):
        text = row[real]
        assert text[0] == CLS and text[-1] == SEP and not (text[1:-1] == SEP).any()
        assert torch.equal(text[1:-1], torch.arange(int(text[1]), int(text[1]) + len(text) - 2))  # contiguous


def test_masking_is_dynamic_the_same_pair_is_masked_differently_when_seen_again():
    split = DocumentSplit(np.arange(5, 13, dtype=np.uint16), np.array([0, 2, 4, 6, 8]), np.array([0, 2, 4]))
    sampler = PretrainingSampler(split, synthetic_tokenizer(10), 64, 12, seed=0, mlm_probability=0.5)
    masks = {}
    for _ in range(4):  # the corpus has a handful of distinct pairs; each comes back many times
        batch = sampler.next()
        original = torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])
        for row, labels in zip(original, batch["labels"], strict=True):
            masks.setdefault(tuple(row.tolist()), set()).add(tuple((labels != IGNORE).tolist()))
    assert max(len(m) for m in masks.values()) > 1 and sum(len(m) > 1 for m in masks.values()) >= len(masks) // 2


def test_state_dict_resumes_exactly():
    sampler = PretrainingSampler(synthetic_split(10), synthetic_tokenizer(1000), 4, 16, seed=0)
    for _ in range(3):
        sampler.next()
    state = sampler.state_dict()
    expected = [sampler.next() for _ in range(3)]
    restored = PretrainingSampler(synthetic_split(10), synthetic_tokenizer(1000), 4, 16, seed=99)
    restored.load_state_dict(state)
    assert restored.batches == 3
    for batch in expected:
        again = restored.next()
        assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_special_tokens_are_never_selected_by_the_sampler():
    sampler = PretrainingSampler(synthetic_split(10), synthetic_tokenizer(1000), 64, 32, 0, mlm_probability=0.9)
    batch = sampler.next()
    original = torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])
    assert (batch["labels"][original < 5] == IGNORE).all() and (batch["labels"] != IGNORE).any()


def test_user_mistakes():
    one_doc = DocumentSplit(np.arange(5, 25, dtype=np.uint16), np.array([0, 10, 20]), np.array([0, 2]))
    with pytest.raises(LmforgeError, match="other documents.*blank lines"):
        PretrainingSampler(one_doc, synthetic_tokenizer(30), 2, 16, 0)
    PretrainingSampler(one_doc, synthetic_tokenizer(30), 2, 16, 0, sentence_objective="sop")  # SOP needs one
    with pytest.raises(LmforgeError, match="seq_len = 4"):
        PretrainingSampler(synthetic_split(3), synthetic_tokenizer(300), 2, 4, 0)
    with pytest.raises(LmforgeError, match="has no cls token"):
        PretrainingSampler(synthetic_split(3), Tokenizer.train_char(["abc"]), 2, 16, 0)
