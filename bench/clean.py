"""Privacy-aware cleaning throughput: PII redaction + deduplication of tinyshakespeare with planted PII and duplicates.

Every 10th document gets a PII item appended (each type, several formats), and 2% of the documents are repeated,
half exactly and half with two words changed. There is no peer in the same process (no library does both with these
rules), so `ratio` is the measured MB/s of redaction + exact dedup (the lmforge clean pipeline on documents, best of
--rounds) over the 20 MB/s target. redact_mb_per_s and near_mb_per_s (redaction + MinHash/LSH near dedup) are printed
beside it, and recall checks that every planted item was redacted. Prints one JSON line on stdout.
Usage: python bench/clean.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from common import best_time, emit, log

from lmforge.data.clean import BLANK_LINE, clean_documents
from lmforge.data.privacy import redact_pii

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared/data/tinyshakespeare.txt"
TARGET_MB_PER_S = 20.0
PLANTED = [
    "john.doe@example.com", "+1 415 555 0132", "(415) 555-0132", "192.168.0.1", "fe80::1",
    "2001:db8::8a2e:370:7334", "4111 1111 1111 1111", "5500005555555559", "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432", "https://admin:s3cret@db.example.com/x",
]  # fmt: skip


def corpus() -> tuple[list[str], int]:
    """The documents with planted items and duplicates, and the number of items planted."""
    rng = random.Random(0)
    docs = [d for d in BLANK_LINE.split(SHAKESPEARE.read_text(encoding="utf-8")) if d.strip()]
    planted = 0
    for i in range(0, len(docs), 10):
        docs[i] += f" Contact {PLANTED[planted % len(PLANTED)]} today."
        planted += 1
    for i in rng.sample(range(len(docs)), len(docs) // 50):
        words = docs[i].split(" ")
        if i % 2:
            for j in rng.sample(range(len(words)), min(2, len(words))):
                words[j] = "changed"
        docs.append(" ".join(words))
    return docs, planted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    docs, planted = corpus()
    mb = sum(len(d.encode()) for d in docs) / 1e6
    log(f"{len(docs)} documents, {mb:.2f} MB, {planted} planted PII items")
    found = sum(sum(redact_pii(d)[1].values()) for d in docs)
    exact = best_time(lambda: clean_documents(docs, True, "exact"), args.rounds)
    redact = best_time(lambda: clean_documents(docs, True, "none"), args.rounds)
    near = best_time(lambda: clean_documents(docs, True, "near"), args.rounds)
    report = clean_documents(docs, True, "near")[2]["dedup"]
    mb_per_s = mb / exact
    emit({
        "bench": "clean", "mb": mb, "documents": len(docs), "mb_per_s": mb_per_s, "target_mb_per_s": TARGET_MB_PER_S,
        "ratio": mb_per_s / TARGET_MB_PER_S, "redact_mb_per_s": mb / redact, "near_mb_per_s": mb / near,
        "recall": min(found, planted) / planted, "exact_duplicates": report["exact_duplicates"],
        "near_duplicates": report["near_duplicates"],
    })  # fmt: skip


if __name__ == "__main__":
    main()
