"""Encoder-decoder speed: lmforge's T5 against transformers' T5ForConditionalGeneration, same weights, one process.

A small T5 (d_model 256, 4 + 4 layers, 4 heads of 64, d_ff 1024, vocabulary 32128), random weights, CPU, fp32, no
dropout. (1) Training: AdamW (fused) steps on batches of 16 x (64 source + 64 target) tokens, a quarter of the rows
padded to half length; tokens/s counts source and target positions. (2) Beam search: 4 beams, 8 sources of 64 tokens
(half of them padded), 64 new tokens each (end-of-sequence is forbidden before then: min_new_tokens on both sides);
new tokens/s counts the 8 x 64 tokens returned, and `identical` says whether both sides returned the same ids.
lmforge runs as its commands do: training with the LM head fused with the loss, beam search with the kernels its
model loader applies (lmforge.kernels). Warm-up calls first; then each side's figure is the best of --rounds
(--beam-rounds) rounds, the sides taking turns. `ratio` is the smaller of the two ratios.
Usage: python bench/seq2seq.py [--steps 3] [--rounds 3] [--beam-rounds 3] [--compile] [--skip train|beam]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternating_rounds, as_lmforge_trains, best_time, emit, log, training_steps  # noqa: E402

from lmforge.generation.beam import seq2seq_beam_search  # noqa: E402
from lmforge.interop.hf_t5 import t5_config, t5_to_ours  # noqa: E402
from lmforge.kernels import apply_kernels  # noqa: E402
from lmforge.models.t5 import T5  # noqa: E402
from lmforge.objectives.losses import seq2seq_loss  # noqa: E402
from lmforge.training.optim import adamw, clip_in_step  # noqa: E402

SHAPE = dict(vocab_size=32128, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4,
             dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # fmt: skip
BATCH, SOURCE, TARGET = 16, 64, 64
BEAMS, BEAM_SOURCES, NEW_TOKENS = 4, 8, 64


def build_models(seed: int):
    """A randomly initialized transformers T5 and an lmforge T5 holding the same weights."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    hf = T5ForConditionalGeneration(T5Config(**SHAPE))
    cfg = t5_config(hf.config.to_dict())
    ours = T5(cfg)
    ours.load_state_dict(t5_to_ours(cfg, hf.state_dict(), ours.state_dict()))
    return ours, hf


def training_batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """n batches with padded sources and targets (a quarter of the rows end early), as a data loader gives them."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(2, SHAPE["vocab_size"], (BATCH, SOURCE), generator=g)
        labels = torch.randint(2, SHAPE["vocab_size"], (BATCH, TARGET), generator=g)
        mask = torch.ones_like(ids)
        for row in range(0, BATCH, 4):
            mask[row, SOURCE // 2 :] = 0
            labels[row, TARGET // 2 :] = -100
        decoder_input_ids = torch.cat([torch.zeros(BATCH, 1, dtype=torch.long), labels[:, :-1]], dim=1).clamp(min=0)
        batches.append(
            {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
             "decoder_input_ids": decoder_input_ids, "labels": labels}
        )  # fmt: skip
    return batches


def train(ours: T5, hf, args) -> tuple[float, float, float]:
    """Tokens/s of each side's AdamW steps, and the largest difference of their first losses (same weights)."""
    batches = training_batches(args.steps, args.seed)
    with torch.no_grad():
        loss_gap = abs(float(seq2seq_loss(ours, batches[0])[0]) - float(hf(**batches[0]).loss))
    ours = as_lmforge_trains(ours.train())
    hf.train()
    groups = [{"params": list(ours.parameters()), "weight_decay": 0.01}]
    ours_opt = adamw(groups, 1e-4, (0.9, 0.999), torch.device("cpu"))
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01, fused=True)  # as transformers.Trainer
    loss_fn = torch.compile(seq2seq_loss) if args.compile else seq2seq_loss
    ours_steps = training_steps(ours, ours_opt, batches, lambda batch: loss_fn(ours, batch)[0], clip_in_step)
    hf_steps = training_steps(hf, hf_opt, batches, lambda batch: hf(**batch).loss)
    tokens = BATCH * (SOURCE + TARGET) * args.steps
    ours_tps, hf_tps = alternating_rounds(ours_steps, hf_steps, args.rounds, tokens)
    return ours_tps, hf_tps, loss_gap


def beam(ours: T5, hf, args) -> tuple[float, float, bool]:
    """New tokens/s of each side's beam search on the same sources, and whether both return the same ids. lmforge's
    model gets the CPU kernels that its model loader applies for every inference verb."""
    ours = apply_kernels(copy.deepcopy(ours).eval())
    hf.eval()
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(2, SHAPE["vocab_size"], (BEAM_SOURCES, SOURCE), generator=g)
    mask = torch.ones_like(ids)
    mask[BEAM_SOURCES // 2 :, SOURCE * 3 // 4 :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    settings = dict(num_beams=BEAMS, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

    def run_ours():
        return seq2seq_beam_search(ours, ids, mask, **settings)

    def run_hf():
        with torch.inference_mode():
            return hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, **settings)

    out = {"ours": run_ours(), "hf": run_hf()}
    identical = out["ours"].tolist() == out["hf"].tolist()
    ours_s = hf_s = float("inf")
    for r in range(args.beam_rounds):
        ours_s = min(ours_s, best_time(run_ours, 1))
        hf_s = min(hf_s, best_time(run_hf, 1))
        log(f"beam round {r + 1}: lmforge {ours_s:.2f} s, transformers {hf_s:.2f} s (best so far)")
    n = BEAM_SOURCES * NEW_TOKENS
    return n / ours_s, n / hf_s, identical


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating training rounds; the best of each side counts")
    ap.add_argument("--beam-rounds", type=int, default=3, help="alternating beam-search rounds; the best counts")
    ap.add_argument("--compile", action="store_true", help="torch.compile lmforge's loss, as `train --compile` does")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", choices=["train", "beam"], help="leave one of the two measurements out")
    args = ap.parse_args()

    ours, hf = build_models(args.seed)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {ours.num_parameters() / 1e6:.1f}M parameters")
    record: dict = {"benchmark": "seq2seq"}
    ratios = []
    if args.skip != "beam":  # beam search first: training changes the weights
        ours_bps, hf_bps, identical = beam(ours, hf, args)
        log(f"beam: lmforge {ours_bps:.1f} new tokens/s, transformers {hf_bps:.1f}, identical: {identical}")
        record |= {"beam_tokens_per_s": ours_bps, "hf_beam_tokens_per_s": hf_bps, "beam_ratio": ours_bps / hf_bps,
                   "identical": identical}  # fmt: skip
        ratios.append(ours_bps / hf_bps)
    if args.skip != "train":
        ours_tps, hf_tps, loss_gap = train(ours, hf, args)
        record |= {"train_tokens_per_s": ours_tps, "hf_train_tokens_per_s": hf_tps, "train_ratio": ours_tps / hf_tps,
                   "first_loss_gap": loss_gap, "compiled": args.compile}  # fmt: skip
        ratios.append(ours_tps / hf_tps)
    emit(record | {"ratio": min(ratios)})


if __name__ == "__main__":
    main()
