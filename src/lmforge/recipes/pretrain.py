"""Pretraining recipe (lmforge train, lmforge pretrain): a run config -> prepared data, the family's model and
objective -> the training loop, with exact resume, checkpoints, metrics.jsonl and loss.png in train.out."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.atomic import check_output_dir
from lmforge.checkpoint.files import TOKENIZER, find_latest, load_checkpoint, same_tokenizer
from lmforge.checkpoint.lock import run_lock
from lmforge.config import RunConfig, TrainConfig
from lmforge.data import iter_eval_blocks
from lmforge.errors import LmforgeError
from lmforge.hardware import peak_flops
from lmforge.models import GPT, MODELS
from lmforge.objectives import CausalLM, objective_for
from lmforge.plots import plot_losses
from lmforge.recipes.continued import start_from
from lmforge.tokenizer import Tokenizer
from lmforge.training import distributed
from lmforge.training.callbacks import MetricsLog
from lmforge.training.compiled import CompiledLoss
from lmforge.training.device import resolve_device, run_precision
from lmforge.training.loop import Hooks, LoopSettings, fit, log, mean_metrics
from lmforge.training.memory import check_fits, parameter_count
from lmforge.training.optim import build_optimizer, lr_at
from lmforge.training.state import restore_state, save_state


@dataclass
class TrainResult:
    checkpoint: Path
    data: Path
    step: int
    train_loss: float
    val_loss: float | None
    tokens_per_s: float
    wall_s: float
    val_metrics: dict | None = None  # the last evaluation, e.g. val_mlm_acc for an encoder
    ms_per_step: dict[str, float] | None = None  # total, data, forward_backward, optimizer, other


def evaluate(model: GPT, tokens: np.ndarray, t: TrainConfig, device: torch.device, max_batches: int | None) -> float:
    """Mean next-token loss over consecutive blocks of a split (all of it when max_batches is None)."""
    batches = itertools.islice(iter_eval_blocks(tokens, t.batch_size, t.seq_len), max_batches)
    return mean_metrics(model, batches, CausalLM.loss, device, t.dtype)["loss"]


def eval_record(model, objective, cfg: RunConfig, data, device, step: int, metrics: MetricsLog) -> dict | None:
    """Evaluates on the validation split (None when it is too small), logs a record and prints one line."""
    batches = objective.eval_batches(cfg, data)
    if batches is None:
        return None
    values = mean_metrics(model, batches, objective.loss, device, cfg.train.dtype)
    ppl = math.exp(min(values[objective.perplexity_of], 50))
    record = {**{f"val_{name}": value for name, value in values.items()}, "val_ppl": ppl}
    metrics.write({"step": step, **record})
    extra = "".join(f", {name} {value:.4f}" for name, value in values.items() if name != "loss")
    log(f"step {step}: val loss {values['loss']:.4f}, perplexity {ppl:.2f}{extra}")
    return record


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    """Trains cfg's model on cfg's data, writing checkpoints, metrics.jsonl and loss.png to cfg.train.out, which this
    run locks (rank 0's lock under torchrun) until it ends."""
    if cfg.data.path is None:
        raise LmforgeError("no training data: pass --data with a text file or a prepared directory")
    check_output_dir(cfg.train.out, {"--data": cfg.data.path})
    device = distributed.setup(resolve_device(cfg.train.device), cfg.train.batch_size)  # this rank's, under torchrun
    distributed.mute_other_ranks()
    with run_lock(cfg.train.out) if distributed.is_main() else contextlib.nullcontext():
        return _train(cfg, device, resume)


def _train(cfg: RunConfig, device: torch.device, resume: bool) -> TrainResult:
    t, out = cfg.train, Path(cfg.train.out)
    existing = find_latest(out)
    if existing is not None and not resume:
        raise LmforgeError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    objective = objective_for(cfg)
    resumed = resume and existing is not None
    start, tokenizer_file = None, existing / TOKENIZER if resumed else None
    if resumed and t.init:  # the architecture is the one it started from, as its checkpoint holds it
        cfg = dataclasses.replace(cfg, model=load_checkpoint(existing).cfg.model)
    elif t.init:
        cfg, start, tokenizer = start_from(cfg, device)
        tokenizer_file = out / "data" / "init-tokenizer.json"
        tokenizer_file.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(tokenizer_file)
    with distributed.main_first():  # rank 0 prepares the data; the others then find it prepared
        # a resumed model reads the ids it was trained on: its tokenizer, never one trained anew on the data
        data = objective.data(cfg, out / "data", tokenizer_file)
    if resumed and not same_tokenizer(data.tokenizer, Tokenizer.load(existing / TOKENIZER)):
        raise LmforgeError(
            f"cannot resume from {existing}: the prepared data {data.path} was tokenized with another tokenizer; "
            "give the text file instead (it is tokenized with the checkpoint's), or choose a new --out"
        )
    # the model's vocabulary (and a T5's special ids) is the data's tokenizer's, whatever the config said
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **objective.vocabulary(data.tokenizer)))
    check_fits(parameter_count(cfg.family, cfg.model), device, distributed.world_size() if t.parallel == "fsdp" else 1)
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)
    model = start if start is not None else MODELS[cfg.family](cfg.model)
    model = distributed.place(model, device, t.parallel)  # sharded with parallel=fsdp
    optimizer = build_optimizer(model, t, device)
    sampler = objective.sampler(cfg, data, t.seed, distributed.rank(), distributed.world_size())
    step = 0
    if resumed:
        step = restore_state(load_checkpoint(existing, with_state=True), cfg, model, optimizer, sampler)
        log(f"resuming from {existing} at step {step}, with its tokenizer ({data.tokenizer.vocab_size} tokens)")
    elif resume:
        log(f"no checkpoint in {out}: starting from scratch")
    loss_fn = CompiledLoss(objective.loss) if t.compile else objective.loss
    loss_fn = distributed.data_parallel(model, loss_fn, device, t.grad_accum_steps)
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=step, enabled=distributed.is_main())
    tokens_per_step = objective.tokens_per_batch(cfg, sampler) * t.grad_accum_steps
    flops_per_step = objective.flops_per_token(model, cfg) * tokens_per_step
    with distributed.main_first():  # rank 0 measures this CPU's peak (once, then cached); the others read it
        peak = peak_flops(device, run_precision(device, t.dtype))  # the benchmarks' measured peak on a CPU
    peak = peak and peak * distributed.world_size()  # flops_per_step counts every rank's batch
    log(
        f"model: {model.num_parameters() / 1e6:.2f}M parameters, vocab {cfg.model.vocab_size}, "
        f"{data.meta['n_train_tokens']:,} training tokens, device {device}"
    )
    last_eval: list[dict | None] = [None]

    def evaluate_at(at: int) -> bool:
        last_eval[0] = eval_record(model, objective, cfg, data, device, at, metrics)
        return False

    def save(at: int) -> Path:
        return save_state(
            out, at, model, optimizer, sampler, cfg, data.tokenizer, t.keep_last, extra_state={"data": str(data.path)}
        )

    if start is not None:  # where the pretrained model stands on this data before continuing: step 0
        evaluate_at(0)
    hooks = Hooks(
        lr=lambda at: lr_at(at, t), save=save, evaluate=evaluate_at,
        throughput=lambda dt: {
            "tokens_per_s": tokens_per_step / dt, "tflops": flops_per_step / dt / 1e12,
            **({"mfu": flops_per_step / dt / peak} if peak else {}),
        },
    )  # fmt: skip
    settings = LoopSettings(
        t.max_steps, t.grad_accum_steps, t.grad_clip, t.dtype, t.log_every, t.eval_every, t.save_every,
        t.max_nonfinite, t.progress and distributed.is_main(), grid_intensity=t.grid_intensity,
    )  # fmt: skip
    result = fit(model, optimizer, sampler, loss_fn, device, out, step, settings, hooks, metrics)
    if t.compile and result.step > step + 1:
        log(
            f"train.compile: the first step took {result.first_step_s:.1f} s, compilation included; "
            f"the steps after it {1000 * result.step_time:.1f} ms each"
        )
    if not result.stopped:
        evaluate_at(result.step)
    path = save(result.step)
    if distributed.is_main():
        plot_losses(out / "metrics.jsonl", out / "loss.png")
    distributed.barrier()  # every rank returns once the checkpoint is on disk
    val = last_eval[0]
    return TrainResult(
        path, data.path, result.step, result.train_loss, val and val["val_loss"],
        tokens_per_step / max(result.step_time, 1e-9), result.wall_s, val, result.ms_per_step(result.step - step),
    )  # fmt: skip
