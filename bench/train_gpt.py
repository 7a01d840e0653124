"""Training throughput of one GPT configuration in lmforge and in transformers.GPT2LMHeadModel, CPU, fp32.

6 layers, 6 heads, d_model 384, context 256, batch 8, vocabulary 50257; AdamW steps on the same random batches.
lmforge runs its training step as `lmforge train` does: its kernels (lmforge.kernels: oneDNN's products where they are
the faster, each block's forward and backward as one autograd Function with causal attention and exact GELU in C),
the clipping inside its AdamW step, glibc keeping freed memory (for both sides: one process) and the fused LM-head
loss. In fp32 that eager step is faster than `lmforge train --compile`'s, where torch.compile traces the modules and
the kernels step aside (871 against 849 tokens/s alternating in one process on a 2-core Zen 4): --compile measures
that one. Under bf16 autocast, where the fp32 kernels do not run, lmforge's loss is compiled unless --no-compile.
MFU is against the faster of torch's and oneDNN's matmul
(lmforge.hardware.matmul_peak_flops), measured after each round and taken at its highest: on a shared machine one
measure swings by 15-25% (139-184 GFLOP/s on a 2-core Zen 3), and so did the MFU read against it.

With --precision bf16 both sides run under bf16 autocast (`train.precision=bf16`: fp32 master weights), lmforge in
fp32 runs as a third contender (`ratio_fp32`), MFU is against the bf16 matmul peak, and a second part runs
`lmforge train --config char-small` on Shakespeare for --loss-steps steps in fp32 and in bf16 (same seed) and reports
both validation losses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternating_rounds, as_lmforge_trains, emit, log, matmul_peak_flops, training_steps  # noqa: E402

from lmforge.config import GPTConfig, TrainConfig  # noqa: E402
from lmforge.models import GPT  # noqa: E402
from lmforge.objectives.families import flops_per_token  # noqa: E402
from lmforge.objectives.losses import causal_lm_loss  # noqa: E402
from lmforge.training.device import autocast_for  # noqa: E402
from lmforge.training.optim import build_optimizer, clip_in_step  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared/data/tinyshakespeare.txt"


def under(context, step):
    """step, run inside a fresh context manager (autocast) each call."""

    def run(*args):
        with context():
            return step(*args)

    return run


def shakespeare_losses(steps: int) -> dict[str, float]:
    """Validation loss of `lmforge train --config char-small` on Shakespeare after `steps` steps, with
    train.precision fp32 and bf16: the same seed, so the same initial weights and batches."""
    from lmforge.config import load_config
    from lmforge.recipes.pretrain import train

    losses = {}
    with tempfile.TemporaryDirectory() as out:
        for precision in ("fp32", "bf16"):
            cfg = load_config("char-small", [
                f"data.path={SHAKESPEARE}", f"train.out={out}/{precision}", f"train.max_steps={steps}",
                f"train.eval_every={steps}", f"train.precision={precision}", "train.progress=false",
            ])  # fmt: skip
            losses[precision] = train(cfg).val_loss
            log(f"{precision}: val loss {losses[precision]:.4f} after {steps} steps of char-small")
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best round of each side counts")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile lmforge's loss (default: only under --precision bf16)")  # fmt: skip
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast on both sides")
    ap.add_argument("--loss-steps", type=int, default=200, help="bf16: steps of the fp32/bf16 loss comparison")
    args = ap.parse_args()
    compiled = args.precision == "bf16" if args.compile is None else args.compile
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    b, t, vocab = 8, 256, 50257
    cfg = GPTConfig(vocab_size=vocab, n_layer=6, n_head=6, d_model=384, max_seq_len=t, dropout=0.0)
    tcfg = TrainConfig(lr=3e-4, weight_decay=0.1)
    batches = [torch.randint(0, vocab, (b, t + 1)) for _ in range(args.steps)]

    ours = as_lmforge_trains(GPT(cfg))
    ours_opt = build_optimizer(ours, tcfg, torch.device("cpu"))
    loss_fn = torch.compile(causal_lm_loss) if compiled else causal_lm_loss

    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=t,
            n_embd=384,
            n_layer=6,
            n_head=6,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )  # fmt: skip
    )
    hf.train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=3e-4, weight_decay=0.1, fused=True)  # as transformers.Trainer

    def context():
        return autocast_for(torch.device("cpu"), args.precision)  # as train.precision sets it

    ours_loss = under(context, lambda batch: loss_fn(ours, batch[:, :-1], batch[:, 1:]))
    ours_steps = training_steps(ours, ours_opt, batches, ours_loss, clip_in_step)
    hf_loss = under(context, lambda batch: hf(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss)
    hf_steps = training_steps(hf, hf_opt, batches, hf_loss)
    peaks = []
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    ours_tps, hf_tps = alternating_rounds(ours_steps, hf_steps, args.rounds, b * t * args.steps,
                                          after_round=lambda: peaks.append(matmul_peak_flops(dtype=dtype)))  # fmt: skip
    peak = max(peaks)
    per_token = flops_per_token(ours, t)
    record = {
        "benchmark": "train_gpt", "precision": args.precision, "lmforge_tokens_per_s": ours_tps,
        "transformers_tokens_per_s": hf_tps, "ratio": ours_tps / hf_tps, "lmforge_mfu": ours_tps * per_token / peak,
        "transformers_mfu": hf_tps * per_token / peak, "peak_gflops": peak / 1e9, "compiled": compiled,
    }  # fmt: skip
    if args.precision == "bf16":
        fp32_steps = training_steps(
            ours, ours_opt, batches, lambda batch: loss_fn(ours, batch[:, :-1], batch[:, 1:]), clip_in_step
        )
        bf16_tps, fp32_tps = alternating_rounds(ours_steps, fp32_steps, args.rounds, b * t * args.steps)
        losses = shakespeare_losses(args.loss_steps)
        record |= {
            "lmforge_fp32_tokens_per_s": fp32_tps, "lmforge_bf16_tokens_per_s_beside_fp32": bf16_tps,
            "ratio_fp32": bf16_tps / fp32_tps, "loss_steps": args.loss_steps,
            "loss_fp32": losses["fp32"], "loss_bf16": losses["bf16"],
            "loss_rel_diff": abs(losses["bf16"] - losses["fp32"]) / losses["fp32"],
        }  # fmt: skip
    emit(record)


if __name__ == "__main__":
    main()
