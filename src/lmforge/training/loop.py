"""The training loop: AdamW, warmup + cosine schedule, accumulation, clipping, autocast, eval, exact resume."""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lmforge.checkpoint.files import (
    find_latest,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
    step_dir,
)
from lmforge.config import RunConfig, TrainConfig
from lmforge.data import iter_eval_blocks
from lmforge.errors import LmforgeError
from lmforge.models import GPT, MODELS
from lmforge.objectives import OBJECTIVES, CausalLM
from lmforge.plots import plot_losses
from lmforge.training import distributed
from lmforge.training.memory import MemoryMeter, summary
from lmforge.training.stability import NonFiniteGuard


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def autocast_for(device: torch.device, dtype: str):
    """bf16 autocast on devices that support it (CUDA by default); fp32 otherwise."""
    use_bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at max_steps."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (t.lr - t.min_lr)


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices (and embeddings) only; biases and LayerNorm gains are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, t.lr, (t.beta1, t.beta2), device)


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel, one pass over each tensor's weights, gradient and moments, on CUDA and CPU alike.

    On CPU the foreach kernel makes about eight passes over memory instead: measured on a 2-core Xeon, fused is 3.4x
    faster at MiniLM's 22.6M parameters (17 against 77 ms a step) and 3x at char-small's 0.8M (0.7 against 2.2 ms).
    """
    fused = True if device.type in ("cpu", "cuda") else None  # other devices take torch's default kernel
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def to_device(batch, device: torch.device):
    """A batch (a tuple or a dict of tensors) on the device."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return tuple(v.to(device, non_blocking=True) for v in batch)


@torch.no_grad()
def mean_metrics(model, batches, loss_fn, device: torch.device, dtype: str) -> dict[str, float]:
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


def evaluate(model: GPT, tokens: np.ndarray, t: TrainConfig, device: torch.device, max_batches: int | None) -> float:
    """Mean next-token loss over consecutive blocks of a split (all of it when max_batches is None)."""
    batches = itertools.islice(iter_eval_blocks(tokens, t.batch_size, t.seq_len), max_batches)
    return mean_metrics(model, batches, CausalLM.loss, device, t.dtype)["loss"]


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


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": [version, list(internal), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    return tensors, plain


def _restore_rng(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _log(message: str) -> None:
    """A progress message on stderr (stdout is for results), from rank 0 only."""
    if distributed.is_main():
        tqdm.write(message, file=sys.stderr)


def _record_step(line: str) -> float:
    """A record's step; a line torn by a crash mid-write reads as infinitely late, so a resume drops it."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Metrics as JSON lines in OUT/metrics.jsonl; on resume, records after the resumed step are dropped."""

    def __init__(self, path: Path, keep_until: int, enabled: bool = True):
        self.path, self.enabled = path, enabled  # only one rank writes
        if not enabled:
            return
        kept = []
        if keep_until and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _record_step(line) <= keep_until]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class StopRequest:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop at the end of the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        """A second signal stops at once, unless within 2 s: under torchrun a Ctrl-C arrives twice, relayed too."""
        now = time.monotonic()
        if self.requested and now - self.since > 2.0:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.since = True, now

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _save(out: Path, step: int, model, cfg: RunConfig, data, optimizer, sampler, t: TrainConfig) -> Path:
    weights, optimizer_state = distributed.full_state(model, optimizer)  # every rank: FSDP gathers the shards
    if not distributed.is_main():
        return step_dir(out, step)
    tensors, plain_optim = optimizer_to_flat(optimizer_state)
    rng_tensors, rng_plain = _rng_state()
    sampler_state = sampler.state_dict()
    tensors.update(rng_tensors)
    tensors.update({f"sampler.{k}": v for k, v in sampler_state.items() if torch.is_tensor(v)})
    state = {
        "step": step,
        "optimizer": plain_optim,
        "rng": rng_plain,
        "sampler": {k: v for k, v in sampler_state.items() if not torch.is_tensor(v)},
        "data": str(data.path),
    }
    return save_checkpoint(out, step, weights, cfg, data.tokenizer, tensors, state, keep_last=t.keep_last)


def _restore(ckpt, cfg: RunConfig, model, optimizer, sampler) -> int:
    if ckpt.cfg.model != cfg.model:
        raise LmforgeError(
            f"cannot resume from {ckpt.path}: its model config differs from this run's; "
            "resume with the same model settings or choose a new --out"
        )
    if ckpt.state is None:
        raise LmforgeError(f"cannot resume from {ckpt.path}: it holds no training state (weights only)")
    optimizer_state = optimizer_from_flat(ckpt.state_tensors, ckpt.state["optimizer"])
    distributed.load_full_state(model, optimizer, ckpt.weights, optimizer_state, str(ckpt.path))
    sampler_state = dict(ckpt.state["sampler"])
    sampler_state.update({k[len("sampler.") :]: v for k, v in ckpt.state_tensors.items() if k.startswith("sampler.")})
    sampler.load_state_dict(sampler_state)
    _restore_rng(ckpt.state_tensors, ckpt.state["rng"])
    return ckpt.state["step"]


def train(cfg: RunConfig, resume: bool = False) -> TrainResult:
    """Trains cfg's model on cfg's data, writing checkpoints, metrics.jsonl and loss.png to cfg.train.out."""
    t = cfg.train
    device = distributed.setup(resolve_device(t.device), t)  # this rank's device under torchrun
    out = Path(t.out)
    if cfg.data.path is None:
        raise LmforgeError("no training data: pass --data with a text file or a prepared directory")
    existing = find_latest(out)
    if existing is not None and not resume:
        raise LmforgeError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    task = OBJECTIVES[cfg.family]
    with distributed.main_first():  # rank 0 prepares the data; the others then find it prepared
        data = task.data(cfg, out / "data")
    cfg.model.vocab_size = data.tokenizer.vocab_size
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)
    model = distributed.place(MODELS[cfg.family](cfg.model), device, t.parallel)  # sharded with parallel=fsdp
    optimizer = build_optimizer(model, t, device)
    sampler = task.sampler(cfg, data, t.seed, distributed.rank(), distributed.world_size())
    step = 0
    if resume and existing is not None:
        step = _restore(load_checkpoint(existing, with_state=True), cfg, model, optimizer, sampler)
        _log(f"resuming from {existing} at step {step}")
    elif resume:
        _log(f"no checkpoint in {out}: starting from scratch")
    loss_fn = torch.compile(task.loss) if t.compile else task.loss
    loss_fn = distributed.data_parallel(model, loss_fn, device, t.grad_accum_steps)
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=step, enabled=distributed.is_main())
    guard, memory = NonFiniteGuard(t.max_nonfinite, out, distributed.is_main()), MemoryMeter(model, optimizer, device)
    tokens_per_step = t.batch_size * t.seq_len * t.grad_accum_steps
    flops_per_step = task.flops_per_token(model, cfg) * tokens_per_step
    _log(
        f"model: {model.num_parameters() / 1e6:.2f}M parameters, vocab {cfg.model.vocab_size}, "
        f"{data.meta['n_train_tokens']:,} training tokens, device {device}"
    )
    start, step_time, train_loss, val = time.perf_counter(), 0.0, float("nan"), None
    model.train()
    with (
        StopRequest() as stop,
        tqdm(total=t.max_steps, initial=step, disable=not t.progress, unit="step", dynamic_ncols=True) as bar,
    ):
        while step < t.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, task_sums = 0.0, {}
            for _ in range(t.grad_accum_steps):
                batch = to_device(sampler.next(), device)
                with autocast_for(device, t.dtype):
                    loss, task_metrics = loss_fn(model, batch)
                (loss / t.grad_accum_steps).backward()
                loss_sum += loss.item()
                for name, value in task_metrics.items():
                    task_sums[name] = task_sums.get(name, 0.0) + value.item() / t.grad_accum_steps
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf")).item()
            train_loss = distributed.all_reduce_mean(loss_sum / t.grad_accum_steps)
            if guard.ok(train_loss, grad_norm, step + 1):  # a non-finite loss or gradient skips the update
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            step_time = dt if step_time == 0.0 else 0.9 * step_time + 0.1 * dt
            tokens_per_s = tokens_per_step / step_time
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
            if step % t.log_every == 0 or step == t.max_steps:
                metrics.write({
                    "step": step, "loss": train_loss, **task_sums, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_s, "tflops": flops_per_step / step_time / 1e12,
                    "elapsed_s": time.perf_counter() - start, "skipped_steps": guard.skipped,
                    **memory.report(final=step == t.max_steps),
                })  # fmt: skip
            if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
                val = _eval_record(model, task, cfg, data, device, step, metrics, bar)
            stop.requested = distributed.any_rank(stop.requested)  # all ranks stop at the same step
            if (t.save_every and step % t.save_every == 0 and step < t.max_steps) or stop.requested:
                _save(out, step, model, cfg, data, optimizer, sampler, t)
            if stop.requested:
                _log(f"stopped at step {step}; continue with --resume")
                break
    if not stop.requested:
        val = _eval_record(model, task, cfg, data, device, step, metrics, bar)
    path = _save(out, step, model, cfg, data, optimizer, sampler, t)
    if distributed.is_main():
        plot_losses(out / "metrics.jsonl", out / "loss.png")
    _log(summary(memory.split(), device))
    distributed.barrier()  # every rank returns once the checkpoint is on disk
    return TrainResult(
        path, data.path, step, train_loss, val and val["val_loss"], tokens_per_step / max(step_time, 1e-9),
        time.perf_counter() - start, val,
    )  # fmt: skip


def _eval_record(model, task, cfg: RunConfig, data, device, step: int, metrics: MetricsLog, bar) -> dict | None:
    """Evaluates on the validation split (None when it is too small), logs a record and prints one line."""
    batches = task.eval_batches(cfg, data)
    if batches is None:
        return None
    values = mean_metrics(model, batches, task.loss, device, cfg.train.dtype)
    ppl = math.exp(min(values[task.perplexity_of], 50))
    record = {**{f"val_{name}": value for name, value in values.items()}, "val_ppl": ppl}
    metrics.write({"step": step, **record})
    extra = "".join(f", {name} {value:.4f}" for name, value in values.items() if name != "loss")
    bar.write(f"step {step}: val loss {values['loss']:.4f}, perplexity {ppl:.2f}{extra}")
    return record
