"""Exact and near duplicates removed (first occurrence kept), near ones by their Jaccard similarity."""

import random
import re

import numpy as np
import pytest
from datasketch import MinHash

from lmforge.data.dedup import NUM_PERM, PERMUTATIONS, _shingles, dedup, signatures
from lmforge.errors import LmforgeError

WORDS = "the a of river stone green quick lazy farmer night rain field wheat old bank sleeps falls over".split()


def document(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n)) + "."


def changed(doc: str, n_words: int, seed: int = 0) -> str:
    words = doc.split()
    for i in random.Random(seed).sample(range(len(words)), n_words):
        words[i] = "CHANGED"
    return " ".join(words)


def test_exact_duplicates_go_after_normalising_case_and_spaces():
    docs = ["Hello  world\nagain", "other", "hello world again", "other"]
    kept, report = dedup(docs, "exact")
    assert kept == ["Hello  world\nagain", "other"]
    assert (report["exact_duplicates"], report["documents_in"], report["documents_out"]) == (2, 4, 2)
    assert report["examples"][0] == {"kind": "exact", "text": "hello world again", "duplicate_of": 0}


def test_near_duplicates_removed_at_08_kept_at_099():
    originals = [document(seed) for seed in range(20)]
    near = [changed(originals[i], 2, seed=i) for i in (2, 7, 11)]
    docs = originals + near
    kept, report = dedup(docs, "near", 0.8)
    assert kept == originals and report["near_duplicates"] == 3 and report["exact_duplicates"] == 0
    assert {x["duplicate_of"] for x in report["examples"]} == {2, 7, 11}
    kept, report = dedup(docs, "near", 0.99)
    assert kept == docs and report["near_duplicates"] == 0
    assert dedup(docs, "none")[0] == docs and dedup(docs, "exact")[0] == docs


def word_hash(word: str) -> int:
    h = 0
    for ch in word:
        h = (h * 1_000_003 + ord(ch)) & 0xFFFFFFFF
    return h | 1


def naive_shingles(doc: str) -> np.ndarray:
    """Each 3-word window's hash, one window at a time (the whole document when shorter; "" is one window of 0)."""
    ids = [word_hash(t) for t in re.findall(r"\w+", doc.casefold())]
    out = []
    for i in range(max(len(ids) - 2, 1)):
        h = 0
        for t in ids[i : i + 3]:
            h = (h * 1_000_003 + t) & 0xFFFFFFFF
        out.append(h)
    return np.array(out, np.uint32)


def test_shingles_of_all_documents_at_once_equal_one_window_at_a_time():
    docs = [document(1, 40), "short", "", "two words", document(2, 300), "Straße — naïve 東京 café!", "a—b_c ½ ٣ x"]
    hashes, offsets = _shingles(docs)
    for d, doc in enumerate(docs):
        assert np.array_equal(hashes[offsets[d] : offsets[d + 1]], naive_shingles(doc)), doc[:20]


def test_signatures_match_datasketch():
    docs = [document(1, 40), "short", document(2, 300)]
    perm = MinHash(NUM_PERM).permutations
    values = signatures(docs, perm)
    assert np.array_equal(PERMUTATIONS[0], perm[0]) and np.array_equal(PERMUTATIONS[1], perm[1])
    for doc, row in zip(docs, values, strict=True):
        h = naive_shingles(doc)
        h ^= h >> 16
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> 13
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> 16
        expected = (h[:, None] * np.asarray(perm[0], np.uint32) + np.asarray(perm[1], np.uint32)).min(axis=0)
        assert (row == expected).all()


@pytest.mark.parametrize("bad", [("near", 0.0), ("near", 1.5), ("fuzzy", 0.8)])
def test_bad_settings_are_one_line(bad):
    with pytest.raises(LmforgeError, match="dedup"):
        dedup(["a"], *bad)
