"""Translation from scratch on this CPU: the shipped transformer-mt config (the original Transformer, 3+3 layers,
256 wide, shared 8k BPE, label smoothing 0.1, warmup + cosine, 4096-token batches, 3200 steps) trained on Multi30k
German -> English from ../shared/data/translation, then beam search (4 beams) over the whole validation split,
scored by sacreBLEU (13a tokenization of the detokenized output, cased) and chrF.

Issue target: BLEU >= 32 on the validation split within 30 minutes of training on 2 CPU cores. There is no peer in
the run: the reference is published small Transformers on Multi30k, 35-38 BLEU after GPU training. Prints one JSON
line: bleu, chrf, train_s, decode_s, steps, tokens_per_s, val_nll and the sacreBLEU signature.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, log  # noqa: E402

from lmforge.config import load_config  # noqa: E402
from lmforge.inference.evaluate import evaluate_seq2seq  # noqa: E402
from lmforge.recipes.pretrain import train  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "translation"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--source", default="de")
    p.add_argument("--target", default="en")
    p.add_argument("--max-steps", type=int, help="the config's train.max_steps unless given")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--out", help="keep the run here (default: a temporary directory)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "run"
        overrides = [f"data.path={args.data}", f"data.source={args.source}", f"data.target={args.target}",
                     f"train.out={out}", "train.progress=false", *args.overrides]  # fmt: skip
        if args.max_steps:
            overrides.append(f"train.max_steps={args.max_steps}")
        cfg = load_config("transformer-mt", overrides)
        log(f"training transformer-mt on {args.data} ({args.source} -> {args.target}) for {cfg.train.max_steps} steps")
        t0 = time.perf_counter()
        result = train(cfg)
        train_s = time.perf_counter() - t0
        log(f"trained in {train_s:.0f} s; beam search over the validation split ...")
        t0 = time.perf_counter()
        report, _ = evaluate_seq2seq(
            result.checkpoint, args.data, args.source, args.target, out=out / "eval", num_beams=args.num_beams
        )
        decode_s = time.perf_counter() - t0
    emit({
        "bench": "translate", "bleu": report["bleu"], "chrf": report["chrf"], "train_s": train_s,
        "decode_s": decode_s, "steps": result.step, "tokens_per_s": result.tokens_per_s,
        "val_nll": result.val_metrics and result.val_metrics.get("val_nll"), "num_beams": args.num_beams,
        "signature": report.get("bleu_signature"), "target_bleu": 32.0, "target_train_s": 1800,
    })  # fmt: skip


if __name__ == "__main__":
    main()
