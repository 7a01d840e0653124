"""Helpers shared by the benchmarks: timing, the machine's measured matmul peak, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

import torch

from lmforge.hardware import best_time, this_machine
from lmforge.training.optim import apply_step


def as_lmforge_trains(model):
    """model as lmforge's training loop runs it: its kernels (lmforge.kernels.apply_kernels), with glibc keeping freed
    memory (lmforge.training.device.keep_freed_memory; process-wide, so the peer in the same process has it too)."""
    from lmforge.kernels import apply_kernels
    from lmforge.training.device import keep_freed_memory

    keep_freed_memory()
    return apply_kernels(model)


def training_steps(model, optimizer, batches: Sequence, loss_of: Callable, clip: Callable | None = None):
    """A function that runs one optimizer step per batch: loss_of(batch), backward, clip to norm 1 (clip(optimizer,
    1.0) where given: lmforge's clip_in_step; else clip_grad_norm_), AdamW step."""

    def run() -> None:
        for batch in batches:
            loss_of(batch).backward()
            if clip is not None:
                clip(optimizer, 1.0)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            apply_step(optimizer)

    return run


def alternating_rounds(
    ours: Callable, peer: Callable, rounds: int, tokens: int, after_round: Callable[[], None] | None = None
) -> tuple[float, float]:
    """Tokens/s of lmforge's and the peer's steps, each its best of `rounds` rounds run in turn after one warm-up call
    each (compilation happens there), so both sides see the same load on a shared machine; after_round() runs after
    each round (a measure that should see the same moments)."""
    log("warming up ...")
    ours()
    peer()
    ours_s = peer_s = float("inf")
    for r in range(rounds):
        ours_s = min(ours_s, best_time(ours, 1))
        peer_s = min(peer_s, best_time(peer, 1))
        log(f"round {r + 1}: lmforge {tokens / ours_s:.0f} tok/s, peer {tokens / peer_s:.0f} tok/s")
        if after_round is not None:
            after_round()
    return tokens / ours_s, tokens / peer_s


def matmul_peak_flops(dtype: torch.dtype = torch.float32) -> float:
    """The machine's matmul peak, measured now and kept as the figure a training run's MFU uses (lmforge.hardware)."""
    return this_machine(measure=True).peak_flops("bf16" if dtype == torch.bfloat16 else "fp32")


def add_compile_flag(parser: argparse.ArgumentParser) -> None:
    """--compile / --no-compile for lmforge's quantized model; compiles(args) says which applies."""
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="run lmforge's quantized layers compiled (`--compile`); default: with --dtype int8 only (bf16 runs faster "
        "eagerly, from oneDNN's packed weights)",
    )


def compiles(args: argparse.Namespace) -> bool:
    return args.compile if args.compile is not None else args.dtype == "int8"


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(record: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)


def sequential_trainer(model, dataset, collator, out: str, batch_size: int, lr: float, weight_decay: float):
    """A transformers.Trainer for one epoch in dataset order (no shuffling), CPU, fp32, linear decay, no warmup,
    clipping at 1, no evaluation, logging or saving: the recipe lmforge's side runs."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    class SequentialTrainer(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, learning_rate=lr, num_train_epochs=1,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=weight_decay, max_grad_norm=1.0, seed=0,
        use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    return SequentialTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def timed(fn) -> tuple[object, float]:
    """fn's result and its wall time in seconds."""
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0
