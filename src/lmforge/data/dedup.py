"""Document deduplication: exact (a hash of the normalised text) and near (MinHash of word shingles, bucketed by
locality-sensitive hashing over bands of the signature, then confirmed by the estimated Jaccard similarity), keeping
each document's first occurrence. The signatures follow datasketch's affine32 scheme (so they can be checked against
it); the word hashing and banding run here, vectorized, since datasketch's per-document LSH objects ran at ~1.5 MB/s.

Repeated documents make a model memorise them (Lee et al. 2022, "Deduplicating Training Data Makes Language Models
Better"); near duplicates (boilerplate, a page scraped twice with a changed date) do the same.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from lmforge.errors import LmforgeError

MODES = ("none", "exact", "near")
SHINGLE = 3  # words per shingle: a changed word touches 3 of them, so a few changes keep J >= 0.8 in 100 words
NUM_PERM = 128
EXAMPLES = 5  # removed duplicates shown in a report
EXAMPLE_CHARS = 80
LSH_MARGIN = 0.75
GROUP_SHINGLES = 1 << 10  # shingles hashed at once: (1024, NUM_PERM) uint32 is 512 KB, in L2 (2x faster than 4 MB)
_WORD = re.compile(r"\w")
_ASCII_WORD = np.array([_WORD.fullmatch(chr(c)) is not None for c in range(128)])
_Q = 1_000_003  # the word hash's base
_Q_INVERSE = pow(_Q, -1, 1 << 32)


def _permutations(num_perm: int = NUM_PERM, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutations h -> a h + b mod 2^32 (a odd) for MinHash(num_perm, seed), drawn as it draws
    them, so these signatures equal its own (a test checks)."""
    generator = np.random.RandomState(seed)
    a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    return a, generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)


PERMUTATIONS = _permutations()
_MASK = np.uint64(0xFFFFFFFF)


def check_dedup(mode: str, threshold: float) -> None:
    if mode not in MODES:
        raise LmforgeError(f"dedup mode {mode!r} is not one of {', '.join(MODES)}")
    if not 0 < threshold <= 1:
        raise LmforgeError(f"dedup threshold {threshold} is out of range: a Jaccard similarity in (0, 1], e.g. 0.8")


def normalise(document: str) -> str:
    """Case and runs of whitespace do not make a document new."""
    return " ".join(document.split()).casefold()


def _word_hashes(documents: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 32-bit hash of every word (a run of regex \\w characters after casefolding) of all documents, and each
    document's number of words. Vectorized over the code points of all documents at once (a regex tokenizer ran at
    ~25 MB/s): a word c_0..c_m-1 hashes to sum c_j Q^(m-1-j) mod 2^32, read off prefix sums of c_j Q^-j (Q is odd, so
    invertible mod 2^32), then | 1."""
    folded = [document.casefold() for document in documents]
    points = np.frombuffer("\x00".join(folded).encode("utf-32-le"), np.uint32)  # \x00 is no word character
    word = np.zeros(len(points) + 2, bool)  # False at both ends, so every word has a start and an end edge
    ascii_ = points < 128
    word[1:-1][ascii_] = _ASCII_WORD[points[ascii_]]
    if not ascii_.all():
        unique, inverse = np.unique(points[~ascii_], return_inverse=True)
        word[1:-1][~ascii_] = np.array([_WORD.fullmatch(chr(c)) is not None for c in unique.tolist()])[inverse]
    edges = np.flatnonzero(word[1:] != word[:-1])
    starts, ends = edges[0::2], edges[1::2]
    n = len(points)
    powers, inverse_powers = np.full(n, _Q, np.uint32), np.full(n, _Q_INVERSE, np.uint32)
    powers[:1] = inverse_powers[:1] = 1
    powers, inverse_powers = (np.cumprod(p, dtype=np.uint32) for p in (powers, inverse_powers))  # Q^i, Q^-i
    prefix = np.concatenate([[np.uint32(0)], np.cumsum(points * inverse_powers, dtype=np.uint32)])
    hashes = (prefix[ends] - prefix[starts]) * powers[ends - 1]
    document_starts = np.cumsum([0] + [len(f) + 1 for f in folded])
    counts = np.diff(np.searchsorted(starts, document_starts))
    return hashes | np.uint32(1), counts


def _shingles(documents: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every document's SHINGLE-word windows (the whole document when it is shorter), stable
    across runs, and the offsets where each document's begin: the word hashes combined polynomially mod 2^32 in numpy
    over all documents at once."""
    ids, lengths = _word_hashes(documents)
    counts = np.maximum(lengths - SHINGLE + 1, 1)  # an empty or short document is one shingle
    offsets = np.concatenate([[0], np.cumsum(counts)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    first_word = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
    width = np.repeat(np.minimum(lengths, SHINGLE), counts)
    padded = np.concatenate([ids.astype(np.uint64), np.zeros(SHINGLE, np.uint64)])
    h = np.zeros(offsets[-1], np.uint64)
    for j in range(SHINGLE):
        h = np.where(j < width, (h * np.uint64(1_000_003) + padded[first_word + j]) & _MASK, h)
    return h.astype(np.uint32), offsets


@functools.lru_cache
def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """The bands b and rows per band r (b * r <= num_perm) whose S-curve 1 - (1 - s^r)^b best separates pairs above
    threshold from those below: the least false-positive plus false-negative area, as datasketch chooses them."""
    s = np.linspace(0, 1, 1001)
    best, choice = np.inf, (1, 1)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            caught = 1 - (1 - s**r) ** b
            error = np.trapezoid(np.where(s < threshold, caught, 1 - caught), s)
            if error < best:
                best, choice = error, (b, r)
    return choice


def _band_keys(values: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) 64-bit keys, one per band of each signature: documents that share one are candidates."""
    v = values[:, : bands * rows].reshape(len(values), bands, rows).astype(np.uint64)
    keys = np.zeros(v.shape[:2], np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys = keys * np.uint64(0x100000001B3) + v[:, :, j]
    return keys


def _shared_buckets(keys: np.ndarray) -> dict[int, list[list[int]]]:
    """For each document that shares a band's key with another, the lists of documents (ascending) it shares them
    with; the others, most of a corpus, have no candidate and never reach Python."""
    buckets: dict[int, list[list[int]]] = {}
    for band in range(keys.shape[1]):
        _, inverse, counts = np.unique(keys[:, band], return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        groups: dict[int, list[int]] = {}
        for k, key in zip(shared.tolist(), inverse[shared].tolist(), strict=True):
            groups.setdefault(key, []).append(k)
        for members in groups.values():
            for k in members:
                buckets.setdefault(k, []).append(members)
    return buckets


def _example(kind: str, document: str, first: int) -> dict:
    return {"kind": kind, "text": " ".join(document.split())[:EXAMPLE_CHARS], "duplicate_of": first}


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser, so that similar shingles get unrelated hashes."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(documents: Sequence[str], permutations: tuple) -> np.ndarray:
    """(n_documents, NUM_PERM) MinHash values, min over the shingles of (a * h + b) mod 2^32 as datasketch's affine32
    scheme, computed for many documents at once: per document in datasketch is ~20x slower."""
    a, b = (np.asarray(p, np.uint32) for p in permutations)
    hashes, offsets = _shingles(documents)
    hashes = _fmix32(hashes)
    out = np.empty((len(documents), len(a)), np.uint32)
    start = 0
    while start < len(documents):  # groups of about GROUP_SHINGLES shingles: (group, NUM_PERM) stays small
        end = max(start + 1, int(np.searchsorted(offsets, offsets[start] + GROUP_SHINGLES, side="right")) - 1)
        end = min(end, len(documents))
        h = hashes[offsets[start] : offsets[end], None]
        with np.errstate(over="ignore"):
            out[start:end] = np.minimum.reduceat(h * a + b, offsets[start:end] - offsets[start], axis=0)
        start = end
    return out


def dedup(documents: Sequence[str], mode: str = "exact", threshold: float = 0.8) -> tuple[list[str], dict]:
    """The documents without duplicates (first occurrences kept, in order) and a report: documents in and out,
    exact and near duplicates removed, and a few removed ones (their first 80 characters) as examples."""
    kept, report = dedup_indices(documents, mode, threshold)
    return [documents[i] for i in kept], report


def dedup_indices(
    documents: Sequence[str], mode: str = "exact", threshold: float = 0.8, progress: bool = False
) -> tuple[list[int], dict]:
    """dedup, giving the indices of the documents kept (a caller that groups documents by file regroups them).

    mode "near" removes exact duplicates first, then documents whose estimated Jaccard similarity of word 3-gram
    shingles with a kept document reaches threshold. LSH finds the candidates at a lower similarity (LSH_MARGIN times
    the threshold, at most 0.9 so that it has bands), as it misses many pairs just above its own threshold.
    """
    check_dedup(mode, threshold)
    report = {"mode": mode, "threshold": threshold, "documents_in": len(documents), "exact_duplicates": 0}
    report.update(near_duplicates=0, examples=[])

    def removed(kind: str, doc: str, first: int) -> None:
        report[f"{kind}_duplicates"] += 1
        if len(report["examples"]) < EXAMPLES:
            report["examples"].append(_example(kind, doc, first))

    unique: list[int] = []
    if mode == "none":
        unique = list(range(len(documents)))
    else:
        seen: dict[bytes, int] = {}
        for i, doc in enumerate(documents):
            key = hashlib.blake2b(normalise(doc).encode(), digest_size=16).digest()
            if key in seen:
                removed("exact", doc, seen[key])
            else:
                seen[key] = i
                unique.append(i)
    if mode == "near" and unique:
        values = signatures([documents[i] for i in unique], PERMUTATIONS)
        kept = np.ones(len(unique), bool)
        buckets = _shared_buckets(_band_keys(values, *lsh_bands(LSH_MARGIN * min(threshold, 0.9))))
        for k in tqdm(sorted(buckets), "near duplicates", unit="doc", disable=not progress):
            candidates = sorted({c for members in buckets[k] for c in members if c < k and kept[c]})
            similar = (values[candidates] == values[k]).mean(axis=1) >= threshold if candidates else []
            first = next((unique[c] for c, ok in zip(candidates, similar, strict=True) if ok), None)
            if first is not None:
                kept[k] = False
                removed("near", documents[unique[k]], first)
        unique = [i for i, keep in zip(unique, kept, strict=True) if keep]
    report["documents_out"] = len(unique)
    return unique, report
