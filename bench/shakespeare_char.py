"""nanoGPT's CPU Shakespeare recipe through `lmforge train`: validation loss and wall time.

char-small (4 layers, 4 heads, d_model 128, context 64, batch 12, lr 1e-3, no dropout; rotary positions and exact
GELU, where nanoGPT has learned positions), 2000 iterations on ../shared/data/tinyshakespeare.txt; val_loss is the
mean over the whole last 10% of the file (nanoGPT's split). nanoGPT's published figure for this recipe is 1.88.
wall_s counts everything from the config on (data preparation, the energy meter's start, evaluations, the
checkpoint); ms_per_step the training steps alone, split into data, forward_backward, optimizer and other; mfu is
against lmforge.hardware's measured peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, log  # noqa: E402

from lmforge.checkpoint import load_model  # noqa: E402
from lmforge.config import load_config  # noqa: E402
from lmforge.data import load_prepared  # noqa: E402
from lmforge.hardware import this_machine  # noqa: E402
from lmforge.objectives.families import flops_per_token  # noqa: E402
from lmforge.recipes.pretrain import evaluate, train  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cfg = load_config(
            "char-small",
            [f"data.path={args.data}", f"train.out={tmp}/run", f"train.max_steps={args.max_steps}",
             "train.progress=false", "train.device=cpu", *args.overrides],
        )  # fmt: skip
        result = train(cfg)
        model, _, run_cfg = load_model(result.checkpoint)
        wide = dataclasses.replace(run_cfg.train, batch_size=256)  # the same blocks, fewer and larger batches
        val_loss = evaluate(model, load_prepared(result.data).val, wide, model.tok_emb.weight.device, None)
        wall = time.perf_counter() - start
    mfu = result.tokens_per_s * flops_per_token(model, run_cfg.train.seq_len) / this_machine().peak_flops("fp32")
    log(f"{args.max_steps} steps: train loss {result.train_loss:.4f}, val loss {val_loss:.4f}, {wall:.1f} s")
    emit({
        "benchmark": "shakespeare_char", "val_loss": val_loss, "wall_s": wall, "steps": args.max_steps,
        "ms_per_step": result.ms_per_step["total"], "ms_per_step_split": {
            name: round(ms, 3) for name, ms in result.ms_per_step.items() if name != "total"
        }, "train_tokens_per_s": result.tokens_per_s, "mfu": mfu,
        "nanogpt_val_loss": 1.88,
    })  # fmt: skip


if __name__ == "__main__":
    main()
