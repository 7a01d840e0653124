"""The one training loop, for pretraining and fine-tuning alike: gradient accumulation, bf16 autocast, clipping, the
non-finite guard, evaluation and checkpoint hooks, stop signals, metrics and a progress bar. Recipes
(lmforge.recipes) wire a config to the data, the model and this loop."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.kernels import apply_kernels
from lmforge.training import distributed
from lmforge.training.callbacks import MetricsLog, StopRequest
from lmforge.training.device import autocast_for, keep_freed_memory, to_device
from lmforge.training.energy import EnergyMeter
from lmforge.training.memory import MemoryMeter, summary
from lmforge.training.optim import apply_step, clip_in_step
from lmforge.training.stability import NonFiniteGuard


@dataclass
class LoopSettings:
    """How the loop steps; recipes fill it from their config (train or finetune section)."""

    max_steps: int
    grad_accum_steps: int = 1
    grad_clip: float = 1.0  # 0 turns clipping off (the norm is still measured for the guard and the log)
    dtype: str = "auto"
    log_every: int = 10
    eval_every: int = 0  # 0: the recipe evaluates at the end only
    save_every: int = 0  # 0: the recipe saves at the end only
    max_nonfinite: int = 5
    progress: bool = True
    section: str = "train"  # the config section whose settings an error message names
    grid_intensity: float = 0.4  # kg CO2 per kWh, for the energy figures of the log records


@dataclass
class Hooks:
    """What the loop asks of its recipe. evaluate(step) returns True to stop early; save(step) writes a resumable
    checkpoint; throughput(step_time) gives the speed figures of a log record (tokens/s, samples/s, TFLOP/s)."""

    lr: Callable[[int], float]
    save: Callable[[int], Path]
    evaluate: Callable[[int], bool] | None = None
    throughput: Callable[[float], dict] = lambda step_time: {}


@dataclass
class LoopResult:
    step: int
    train_loss: float
    step_time: float  # seconds per step (an exponential moving average)
    wall_s: float
    train_s: float  # seconds spent in steps (evaluation and saving left out)
    stopped: bool  # by a signal or early stopping, before max_steps
    phase_s: dict[str, float]  # train_s split: data, forward_backward, optimizer and other (lr, logging, progress)
    first_step_s: float = 0.0  # this run's first step (with train.compile: the compilation's time is in it)

    def ms_per_step(self, steps: int) -> dict[str, float]:
        """Milliseconds per step, in total and by phase (on a GPU the phases time the launches, not the kernels)."""
        phases = {"total": self.train_s, **self.phase_s}
        return {name: 1000 * seconds / max(steps, 1) for name, seconds in phases.items()}


def log(message: str) -> None:
    """A progress message on stderr (stdout is for results), from rank 0 only."""
    if distributed.is_main():
        tqdm.write(message, file=sys.stderr)


@torch.no_grad()
def mean_metrics(model, batches: Iterable, loss_fn, device: torch.device, dtype: str) -> dict[str, float]:
    """The loss and the task's metrics averaged over the batches, each batch weighted by its rows."""
    was_training = model.training
    model.eval()
    sums, rows = {}, 0
    for batch in batches:
        batch = to_device(batch, device)
        with autocast_for(device, dtype):
            loss, metrics = loss_fn(model, batch)
        n = len(next(iter(batch.values())) if isinstance(batch, dict) else batch[0])
        for name, value in {"loss": loss, **metrics}.items():
            sums[name] = sums.get(name, 0.0) + value.item() * n
        rows += n
    model.train(was_training)
    return {name: total / max(rows, 1) for name, total in sums.items()}


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler,
    loss_fn,
    device: torch.device,
    out: Path,
    start_step: int,
    settings: LoopSettings,
    hooks: Hooks,
    metrics: MetricsLog,
) -> LoopResult:
    """Steps from start_step to settings.max_steps; each step draws grad_accum_steps batches from sampler.next(),
    sums their gradients and applies one update at hooks.lr(step) x each group's lr_scale (a non-finite loss or
    gradient skips the update). SIGINT/SIGTERM save at the end of the current step and stop."""
    s = settings
    if device.type == "cpu":
        apply_kernels(model)  # oneDNN's products where they are the faster (lmforge.kernels.linear)
        keep_freed_memory()
    guard = NonFiniteGuard(s.max_nonfinite, out, distributed.is_main(), s.section)
    start, step_time, train_s, train_loss = time.perf_counter(), 0.0, 0.0, float("nan")
    phase_s = dict.fromkeys(("data", "forward_backward", "optimizer"), 0.0)
    first_step_s = 0.0
    step, stopped = start_step, False
    model.train()
    with (
        StopRequest() as stop,
        EnergyMeter(device) as energy_meter,
        tqdm(total=s.max_steps, initial=step, disable=not s.progress, unit="step", dynamic_ncols=True) as bar,
    ):
        memory = MemoryMeter(model, optimizer, device)  # after codecarbon's start, whose libraries are no activations
        while step < s.max_steps:
            t0 = time.perf_counter()
            lr = hooks.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum, task_sums = 0.0, {}
            for _ in range(s.grad_accum_steps):
                t1 = time.perf_counter()
                batch = to_device(sampler.next(), device)
                t2 = time.perf_counter()
                with autocast_for(device, s.dtype):
                    loss, task_metrics = loss_fn(model, batch)
                (loss / s.grad_accum_steps).backward()
                loss_sum += loss.item()
                for name, value in task_metrics.items():
                    task_sums[name] = task_sums.get(name, 0.0) + value.item() / s.grad_accum_steps
                t3 = time.perf_counter()
                phase_s["data"] += t2 - t1
                phase_s["forward_backward"] += t3 - t2
            grad_norm = clip_in_step(optimizer, s.grad_clip)
            train_loss = distributed.all_reduce_mean(loss_sum / s.grad_accum_steps)
            apply_step(optimizer, guard.ok(train_loss, grad_norm, step + 1))
            phase_s["optimizer"] += time.perf_counter() - t3
            step += 1
            dt = time.perf_counter() - t0
            if step == start_step + 1:
                first_step_s = dt
            # the average restarts at the second step: the first carries one-off work (compiling, kernels' setup)
            step_time = dt if step - start_step <= 2 else 0.9 * step_time + 0.1 * dt
            speed = hooks.throughput(step_time)
            bar.update(1)
            rates = {"tok_s": f"{speed['tokens_per_s']:,.0f}"} if "tokens_per_s" in speed else {}
            rates |= {"mfu": f"{speed['mfu']:.2f}"} if "mfu" in speed else {}
            energy = energy_meter.kwh()
            bar.set_postfix(loss=f"{train_loss:.4f}", **rates, kWh=f"{energy:.4f}", refresh=False)
            if step % s.log_every == 0 or step == s.max_steps:
                metrics.write({
                    "step": step, "loss": train_loss, **task_sums, "lr": lr, "grad_norm": grad_norm, **speed,
                    "elapsed_s": time.perf_counter() - start, "skipped_steps": guard.skipped, "energy_kwh": energy,
                    "co2_kg": energy * s.grid_intensity, "energy_source": energy_meter.source,
                    **memory.report(final=step == s.max_steps),
                })  # fmt: skip
            stop.requested = distributed.any_rank(stop.requested)  # all ranks stop at the same step
            train_s += time.perf_counter() - t0  # the step and its bookkeeping; evaluation and saving left out
            if hooks.evaluate and s.eval_every and step % s.eval_every == 0 and step < s.max_steps:
                if hooks.evaluate(step):
                    stopped = True
            if (s.save_every and step % s.save_every == 0 and step < s.max_steps) or stop.requested:
                hooks.save(step)
            if stop.requested:
                log(f"stopped at step {step}; continue with --resume")
                stopped = True
            if stopped:
                break
    log(summary(memory.split(), device))
    phase_s["other"] = max(0.0, train_s - sum(phase_s.values()))
    wall = time.perf_counter() - start
    result = LoopResult(step, train_loss, step_time, wall, train_s, stopped, phase_s, first_step_s)
    if step > start_step:  # every recipe's run says where its steps' time went
        ms = result.ms_per_step(step - start_step)
        log(
            f"{ms['total']:.1f} ms a step: forward+backward {ms['forward_backward']:.1f}, optimizer "
            f"{ms['optimizer']:.1f}, data {ms['data']:.1f}, other {ms['other']:.1f}"
        )
    return result
