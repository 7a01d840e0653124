"""The training loop: AdamW, warmup + cosine schedule, accumulation, clipping, autocast, eval, exact resume."""

from __future__ import annotations

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

from lmforge import distributed
from lmforge.checkpoint import (
    find_latest,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
    step_dir,
)
from lmforge.config import RunConfig, TrainConfig
from lmforge.data import BatchSampler, ensure_prepared, iter_eval_blocks, load_prepared
from lmforge.errors import LmforgeError
from lmforge.memory import MemoryMeter, summary
from lmforge.models import GPT
from lmforge.objectives import causal_lm_loss
from lmforge.plots import plot_losses
from lmforge.stability import NonFiniteGuard


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
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}  # fused AdamW is slow on CPU
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), **fast)


def flops_per_token(model: GPT, seq_len: int) -> float:
    """6N for the matrices plus 12 * n_layer * d_model * T for attention (PaLM appendix B, nanoGPT)."""
    c = model.cfg
    n = model.num_parameters(exclude_embeddings=True)
    if c.tie_embeddings:  # the LM head's matmul runs whether or not its weight is shared
        n += c.d_model * c.vocab_size
    return 6 * n + 12 * c.n_layer * c.d_model * seq_len


@torch.no_grad()
def evaluate(model: GPT, tokens: np.ndarray, t: TrainConfig, device: torch.device, max_batches: int | None) -> float:
    """Mean next-token loss over consecutive blocks of a split (all of it when max_batches is None)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(iter_eval_blocks(tokens, t.batch_size, t.seq_len)):
        if max_batches is not None and i >= max_batches:
            break
        with autocast_for(device, t.dtype):
            total += causal_lm_loss(model, x.to(device), y.to(device)).item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class TrainResult:
    checkpoint: Path
    data: Path
    step: int
    train_loss: float
    val_loss: float | None
    tokens_per_s: float
    wall_s: float


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
    with distributed.main_first():  # rank 0 prepares the data; the others then find it prepared
        data_dir = ensure_prepared(
            cfg.data.path, cfg.data.tokenizer, cfg.data.vocab_size, cfg.data.val_fraction, out / "data", t.progress,
            cfg.data.on_bad_line,
        )  # fmt: skip
    data = load_prepared(data_dir)
    cfg.model.vocab_size = data.tokenizer.vocab_size
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    np.random.seed(t.seed)
    model = distributed.place(GPT(cfg.model), device, t.parallel)  # sharded across ranks with parallel=fsdp
    optimizer = build_optimizer(model, t, device)
    sampler = BatchSampler(data.train, t.batch_size, t.seq_len, t.seed, distributed.rank(), distributed.world_size())
    step = 0
    if resume and existing is not None:
        step = _restore(load_checkpoint(existing, with_state=True), cfg, model, optimizer, sampler)
        _log(f"resuming from {existing} at step {step}")
    elif resume:
        _log(f"no checkpoint in {out}: starting from scratch")
    loss_fn = torch.compile(causal_lm_loss) if t.compile else causal_lm_loss
    loss_fn = distributed.data_parallel(model, loss_fn, device, t.grad_accum_steps)
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=step, enabled=distributed.is_main())
    guard, memory = NonFiniteGuard(t.max_nonfinite, out, distributed.is_main()), MemoryMeter(model, optimizer, device)
    tokens_per_step = t.batch_size * t.seq_len * t.grad_accum_steps
    flops_per_step = flops_per_token(model, t.seq_len) * tokens_per_step
    _log(
        f"model: {model.num_parameters() / 1e6:.2f}M parameters, vocab {cfg.model.vocab_size}, "
        f"{data.meta['n_train_tokens']:,} training tokens, device {device}"
    )
    start, step_time, train_loss, val_loss = time.perf_counter(), 0.0, float("nan"), None
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
            loss_sum = 0.0
            for _ in range(t.grad_accum_steps):
                x, y = (v.to(device, non_blocking=True) for v in sampler.next())
                with autocast_for(device, t.dtype):
                    loss = loss_fn(model, x, y)
                (loss / t.grad_accum_steps).backward()
                loss_sum += loss.item()
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
                    "step": step, "loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_s, "tflops": flops_per_step / step_time / 1e12,
                    "elapsed_s": time.perf_counter() - start, "skipped_steps": guard.skipped,
                    **memory.report(final=step == t.max_steps),
                })  # fmt: skip
            if t.eval_every and step % t.eval_every == 0 and step < t.max_steps:
                val_loss = _eval_record(model, data, t, device, step, metrics, bar)
            stop.requested = distributed.any_rank(stop.requested)  # all ranks stop at the same step
            if (t.save_every and step % t.save_every == 0 and step < t.max_steps) or stop.requested:
                _save(out, step, model, cfg, data, optimizer, sampler, t)
            if stop.requested:
                _log(f"stopped at step {step}; continue with --resume")
                break
    if not stop.requested:
        val_loss = _eval_record(model, data, t, device, step, metrics, bar)
    path = _save(out, step, model, cfg, data, optimizer, sampler, t)
    if distributed.is_main():
        plot_losses(out / "metrics.jsonl", out / "loss.png")
    _log(summary(memory.split(), device))
    distributed.barrier()  # every rank returns once the checkpoint is on disk
    return TrainResult(
        path, data.path, step, train_loss, val_loss, tokens_per_step / max(step_time, 1e-9), time.perf_counter() - start
    )


def _eval_record(model, data, t: TrainConfig, device, step: int, metrics: MetricsLog, bar) -> float | None:
    if len(data.val) < t.seq_len + 1:
        return None
    val_loss = evaluate(model, data.val, t, device, t.eval_steps)
    metrics.write({"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))})
    bar.write(f"step {step}: val loss {val_loss:.4f}, perplexity {math.exp(min(val_loss, 50)):.2f}")
    return val_loss
