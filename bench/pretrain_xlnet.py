"""Permutation-LM pretraining throughput of one XLNet shape in lmforge and in transformers.XLNetLMHeadModel, CPU, fp32.

4 layers, 4 heads, d_model 256 (d_inner 1024), sequence 128, batch 16, vocabulary 32000 (xlnet-base's), dropout 0.1;
AdamW steps on the same batches: a factorization order per sequence, its last 1/6 predicted (21 tokens of 128), as
`lmforge pretrain --config xlnet-small` draws them (lmforge.objectives.permutation.permutation_batch). Both run the
two-stream attention and the LM head on the predicted positions only (the query stream); no memory (mems).
lmforge runs its step as `lmforge pretrain --compile` does (torch.compile; --no-compile for eager), with the LM head
fused into the cross-entropy; transformers runs eager, as its Trainer does by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternating_rounds, as_lmforge_trains, emit, training_steps  # noqa: E402

from lmforge.config import TrainConfig  # noqa: E402
from lmforge.config.models import XLNetConfig  # noqa: E402
from lmforge.models import XLNet  # noqa: E402
from lmforge.objectives.permutation import permutation_batch, permutation_lm_loss  # noqa: E402
from lmforge.training.optim import build_optimizer, clip_in_step  # noqa: E402

B, T, VOCAB, K = 16, 128, 32000, 6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best round of each side counts")
    ap.add_argument("--no-compile", action="store_true", help="lmforge's step eager (default: as pretrain --compile)")
    args = ap.parse_args()
    from transformers import XLNetConfig as HFXLNetConfig
    from transformers import XLNetLMHeadModel

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [
        permutation_batch(torch.randint(9, VOCAB, (B, T), generator=g), K, generator=g) for _ in range(args.steps)
    ]
    cfg = XLNetConfig(vocab_size=VOCAB, n_layer=4, n_head=4, d_model=256, d_ff=1024, max_seq_len=T, dropout=0.1)
    tcfg = TrainConfig(lr=1e-4, weight_decay=0.01)

    ours = as_lmforge_trains(XLNet(cfg).train())
    ours_opt = build_optimizer(ours, tcfg, torch.device("cpu"))
    loss_fn = permutation_lm_loss if args.no_compile else torch.compile(permutation_lm_loss)

    hf = XLNetLMHeadModel(HFXLNetConfig(
        vocab_size=VOCAB, d_model=256, n_layer=4, n_head=4, d_inner=1024, ff_activation="gelu", dropout=0.1,
        mem_len=None, use_mems_train=False,
    )).train()  # fmt: skip
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01, fused=True)  # as transformers.Trainer

    def hf_loss(b):
        return hf(
            input_ids=b["input_ids"], perm_mask=b["perm_mask"], target_mapping=b["target_mapping"], labels=b["labels"]
        ).loss

    ours_steps = training_steps(ours, ours_opt, batches, lambda b: loss_fn(ours, b)[0], clip_in_step)
    hf_steps = training_steps(hf, hf_opt, batches, hf_loss)
    ours_tps, hf_tps = alternating_rounds(ours_steps, hf_steps, args.rounds, B * T * args.steps)
    emit({
        "benchmark": "pretrain_xlnet", "lmforge_tokens_per_s": ours_tps, "transformers_tokens_per_s": hf_tps,
        "ratio": ours_tps / hf_tps, "compiled": not args.no_compile, "threads": torch.get_num_threads(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
