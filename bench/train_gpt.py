"""Training throughput of one GPT configuration in lmforge and in transformers.GPT2LMHeadModel, CPU, fp32.

6 layers, 6 heads, d_model 384, context 256, batch 8, vocabulary 50257; AdamW steps on the same random batches.
lmforge runs its training step as `lmforge train --compile` does: torch.compile and the fused LM-head loss.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternating_rounds, emit, matmul_peak_flops, training_steps  # noqa: E402

from lmforge.config import GPTConfig, TrainConfig  # noqa: E402
from lmforge.models import GPT  # noqa: E402
from lmforge.objectives.families import flops_per_token  # noqa: E402
from lmforge.objectives.losses import causal_lm_loss  # noqa: E402
from lmforge.training.optim import build_optimizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best round of each side counts")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    b, t, vocab = 8, 256, 50257
    cfg = GPTConfig(vocab_size=vocab, n_layer=6, n_head=6, d_model=384, max_seq_len=t, dropout=0.0)
    tcfg = TrainConfig(lr=3e-4, weight_decay=0.1)
    batches = [torch.randint(0, vocab, (b, t + 1)) for _ in range(args.steps)]

    ours = GPT(cfg)
    ours_opt = build_optimizer(ours, tcfg, torch.device("cpu"))
    loss_fn = causal_lm_loss if args.no_compile else torch.compile(causal_lm_loss)

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

    ours_steps = training_steps(ours, ours_opt, batches, lambda batch: loss_fn(ours, batch[:, :-1], batch[:, 1:]))
    hf_steps = training_steps(hf, hf_opt, batches, lambda batch: hf(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss)
    ours_tps, hf_tps = alternating_rounds(ours_steps, hf_steps, args.rounds, b * t * args.steps)
    peak = matmul_peak_flops()
    per_token = flops_per_token(ours, t)
    emit({
        "benchmark": "train_gpt", "lmforge_tokens_per_s": ours_tps, "transformers_tokens_per_s": hf_tps,
        "ratio": ours_tps / hf_tps, "lmforge_mfu": ours_tps * per_token / peak,
        "transformers_mfu": hf_tps * per_token / peak, "peak_gflops": peak / 1e9, "compiled": not args.no_compile,
    })  # fmt: skip


if __name__ == "__main__":
    main()
