"""Fine-tuning all-MiniLM-L6-v2 for SST-2 sentiment in lmforge and in transformers.Trainer, CPU, fp32, one process.

The same recipe on both sides: the first --limit training examples in file order (no shuffling), one epoch,
sequence length 64, batch 32, AdamW lr 5e-5 with linear decay to 0 and no warmup, weight decay 0.01, gradient
clipping at 1, dropout 0.1, seed 0; each batch padded to its longest example (transformers: DataCollatorWithPadding).
Samples/s count the training loop only (loading and tokenizing excluded on both sides); dev accuracy is on all of
dev.tsv. Both sides run on --threads torch threads (1 by default: on a shared 2-core machine under load, two
threads each spin-wait at every barrier and run several times slower). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, log, sequential_trainer, timed  # noqa: E402

from lmforge.checkpoint import resolve  # noqa: E402
from lmforge.config import FinetuneConfig  # noqa: E402
from lmforge.inference.evaluate import evaluate_checkpoint  # noqa: E402
from lmforge.recipes.finetune import finetune  # noqa: E402

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
T, B, LR, WD = 64, 32, 5e-5, 0.01


def rows(path: Path, limit: int | None) -> list[tuple[str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(text, int(label)) for text, label in (line.rsplit("\t", 1) for line in lines[:limit])]


def run_lmforge(train: Path, work: Path, max_steps: int | None) -> tuple[float, float]:
    ft = FinetuneConfig(
        epochs=1, max_steps=max_steps, batch_size=B, lr=LR, warmup=0, weight_decay=WD, shuffle=False, seed=0,
        device="cpu", progress=False,
    )  # fmt: skip
    result = finetune("all-MiniLM-L6-v2", train, None, work / "lmforge", max_seq_len=T, ft=ft)
    report, _ = evaluate_checkpoint(result.checkpoint, SST2 / "dev.tsv", work / "lmforge-eval")
    return result.train_samples_per_s, report["accuracy"]


def run_transformers(train: list[tuple[str, int]], work: Path, max_steps: int | None) -> tuple[float, float]:
    from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding

    path = resolve("all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    n = len(train) if max_steps is None else min(len(train), max_steps * B)

    def encode(pairs):
        return [dict(tokenizer(text, truncation=True, max_length=T), labels=label) for text, label in pairs]

    collator = DataCollatorWithPadding(tokenizer)
    trainer = sequential_trainer(model, encode(train[:n]), collator, str(work / "hf"), B, LR, WD)
    _, seconds = timed(trainer.train)
    dev = rows(SST2 / "dev.tsv", None)
    predictions = trainer.predict(encode(dev)).predictions.argmax(-1)
    accuracy = sum(int(p == label) for p, (_, label) in zip(predictions, dev, strict=True)) / len(dev)
    return n / seconds, accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=20000, help="the first N training examples")
    ap.add_argument("--max-steps", type=int, help="stop both sides after N steps (for a quick check)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (1: a shared, busy CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = rows(SST2 / "train.tsv", args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subset = work / "train.tsv"
        subset.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in train), encoding="utf-8")
        load = [os.getloadavg()[0]]
        log(f"lmforge: {len(train)} examples ...")
        ours, ours_acc = run_lmforge(subset, work, args.max_steps)
        load.append(os.getloadavg()[0])
        log(f"lmforge: {ours:.1f} samples/s, dev accuracy {ours_acc:.4f}; transformers ...")
        theirs, theirs_acc = run_transformers(train, work, args.max_steps)
        load.append(os.getloadavg()[0])
    emit({
        "bench": "finetune_sst2", "examples": len(train), "max_steps": args.max_steps, "seq_len": T, "batch": B,
        "lmforge_samples_per_s": ours, "transformers_samples_per_s": theirs, "ratio": ours / theirs,
        "lmforge_dev_accuracy": ours_acc, "transformers_dev_accuracy": theirs_acc, "threads": torch.get_num_threads(),
        "load_avg_1min": load,
    })  # fmt: skip


if __name__ == "__main__":
    main()
