"""Fine-tuning all-MiniLM-L6-v2 for NER (CoNLL-2003, IOB2) in lmforge and in transformers.Trainer, CPU, fp32.

The same recipe on both sides: the first --limit sentences of train.txt in file order (no shuffling), one epoch
(--limit / 16 steps), sequence length 128, batch 16, AdamW lr 5e-5 with linear decay to 0 and no warmup, weight
decay 0.01, clipping at 1, seed 0; each word's tag on its first subword, the rest ignored; each batch padded to its
longest sentence (transformers: DataCollatorForTokenClassification). Samples/s count the training loop only; entity
F1 on dev.txt (transformers' side scored by seqeval; a word cut off by the length limit is predicted O on both).
Both sides run on --threads torch threads (1 by default, as in finetune_sst2.py). Prints one JSON line.
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
from lmforge.data.labelled import discover_labels, read_examples  # noqa: E402
from lmforge.inference.evaluate import evaluate_checkpoint  # noqa: E402
from lmforge.recipes.finetune import finetune  # noqa: E402

NER = Path(__file__).resolve().parents[2] / "shared" / "data" / "ner"
T, B, LR, WD = 128, 16, 5e-5, 0.01


def write_conll(examples, path: Path) -> Path:
    sentences = ("".join(f"{w} {t}\n" for w, t in zip(e.text, e.label, strict=True)) for e in examples)
    path.write_text("\n".join(sentences) + "\n")
    return path


def run_lmforge(train: Path, dev: Path, work: Path) -> tuple[float, float]:
    ft = FinetuneConfig(
        epochs=1, batch_size=B, lr=LR, warmup=0, weight_decay=WD, shuffle=False, seed=0, device="cpu", progress=False
    )
    result = finetune("all-MiniLM-L6-v2", train, None, work / "lmforge", "ner", max_seq_len=T, ft=ft)
    report, _ = evaluate_checkpoint(result.checkpoint, dev, work / "lmforge-eval")
    return result.train_samples_per_s, report["f1"]


def run_transformers(train, dev, labels: list[str], work: Path) -> tuple[float, float]:
    from seqeval.metrics import f1_score
    from transformers import AutoTokenizer, BertForTokenClassification, DataCollatorForTokenClassification

    path = resolve("all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = BertForTokenClassification.from_pretrained(path, num_labels=len(labels))
    index = {label: i for i, label in enumerate(labels)}

    def encode(examples):
        features = []
        for e in examples:
            f = tokenizer(e.text, is_split_into_words=True, truncation=True, max_length=T)
            words, previous, targets = f.word_ids(), None, []
            for w in words:
                targets.append(index[e.label[w]] if w is not None and w != previous else -100)
                previous = w
            features.append(dict(f, labels=targets))
        return features

    collator = DataCollatorForTokenClassification(tokenizer)
    trainer = sequential_trainer(model, encode(train), collator, str(work / "hf"), B, LR, WD)
    _, seconds = timed(trainer.train)
    dev_features = encode(dev)
    logits = trainer.predict(dev_features).predictions
    predicted = []
    for e, f, row in zip(dev, dev_features, logits, strict=True):
        words = tokenizer(e.text, is_split_into_words=True, truncation=True, max_length=T).word_ids()
        tags = ["O"] * len(e.text)
        for pos, label in enumerate(f["labels"]):
            if label != -100:
                tags[words[pos]] = labels[int(row[pos].argmax())]
        predicted.append(tags)
    return len(train) / seconds, f1_score([e.label for e in dev], predicted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=2000, help="the first N training sentences")
    ap.add_argument("--dev-limit", type=int, help="score on the first N dev sentences only (quick checks)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (1: a shared, busy CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = read_examples(NER / "train.txt", "ner")[: args.limit]
    dev = read_examples(NER / "dev.txt", "ner")[: args.dev_limit]
    labels = discover_labels(train, "ner", NER / "train.txt")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        load = [os.getloadavg()[0]]
        log(f"lmforge: {len(train)} sentences ...")
        train_file, dev_file = write_conll(train, work / "train.conll"), write_conll(dev, work / "dev.conll")
        ours, ours_f1 = run_lmforge(train_file, dev_file, work)
        load.append(os.getloadavg()[0])
        log(f"lmforge: {ours:.1f} samples/s, dev F1 {ours_f1:.4f}; transformers ...")
        theirs, theirs_f1 = run_transformers(train, dev, labels, work)
        load.append(os.getloadavg()[0])
    emit({
        "bench": "finetune_ner", "sentences": len(train), "dev_sentences": len(dev), "seq_len": T, "batch": B,
        "lmforge_samples_per_s": ours, "transformers_samples_per_s": theirs, "ratio": ours / theirs,
        "lmforge_dev_f1": ours_f1, "transformers_dev_f1": theirs_f1, "threads": torch.get_num_threads(),
        "load_avg_1min": load,
    })  # fmt: skip


if __name__ == "__main__":
    main()
