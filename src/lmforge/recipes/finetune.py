"""Fine-tuning recipe (lmforge finetune): a FinetuneRun config -> the task's examples, the backbone from the one
loader, the task's head -> the training loop. Warmup + linear decay, layer-wise lr decay, evaluation every N steps
with early stopping, the best checkpoint (by the task's metric) kept in OUT, exact resume from OUT/resume."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.atomic import check_output_dir
from lmforge.checkpoint.files import find_latest, load_checkpoint, same_tokenizer, save_checkpoint
from lmforge.checkpoint.loader import load, trainable
from lmforge.checkpoint.lock import run_lock
from lmforge.config import DataConfig, FinetuneConfig, FinetuneRun, RunConfig, TaskConfig
from lmforge.data.labelled import Columns
from lmforge.data.sampler import FeatureSampler, class_weights
from lmforge.errors import LmforgeError
from lmforge.inference.evaluate import write_report
from lmforge.inference.predict import columns_of, pad_id_of, predict_features
from lmforge.plots import plot_losses
from lmforge.tasks import Task, get_task
from lmforge.tokenizer import Tokenizer
from lmforge.training import distributed
from lmforge.training.callbacks import MetricsLog
from lmforge.training.device import resolve_device
from lmforge.training.loop import Hooks, LoopSettings, fit, log
from lmforge.training.memory import check_fits
from lmforge.training.optim import adamw, linear_lr, param_groups
from lmforge.training.state import restore_state, save_state

RESUME = "resume"  # OUT/resume holds the newest resumable state; OUT/step-NNNNNN the best model


@dataclass
class FinetuneResult:
    checkpoint: Path
    step: int  # the step of the kept (best) checkpoint
    steps: int  # the steps trained
    metric: str
    report: dict | None  # the kept checkpoint's evaluation; None without eval data
    train_samples_per_s: float
    train_s: float


def finetune(
    model_path: str | Path,
    train_path: str | Path,
    eval_path: str | Path | None,
    out: str | Path,
    task: str = "classification",
    columns: Columns | None = None,
    max_seq_len: int | None = None,
    pooling: str | None = None,
    ft: FinetuneConfig | None = None,
    doc_stride: int = 128,
    max_answer_len: int = 30,
) -> FinetuneResult:
    """run_finetune with its settings as arguments (the library's shortcut for a FinetuneRun)."""
    ft, columns = ft or FinetuneConfig(), columns or Columns()
    ft.model, ft.train, ft.out = str(model_path), str(train_path), str(out)
    ft.eval = None if eval_path is None else str(eval_path)
    info = TaskConfig(
        task=task, pooling=pooling, max_seq_len=max_seq_len, text_column=columns.text,
        text_pair_column=columns.text_pair, label_column=columns.label, head_column=columns.head,
        tail_column=columns.tail, doc_stride=doc_stride, max_answer_len=max_answer_len,
    )  # fmt: skip
    return run_finetune(FinetuneRun(info, ft))


def run_finetune(run: FinetuneRun, resume: bool = False) -> FinetuneResult:
    """Fine-tunes finetune.model for the task on finetune.train; keeps the best checkpoint on finetune.eval (or the
    last one without eval data) in OUT, with metrics.jsonl, loss.png and OUT/eval/report.{json,md}. SIGINT/SIGTERM
    stop at the end of the current step, which is evaluated, and the run finishes as at its end (OUT/resume kept for
    --resume); kill -9 loses at most the steps since the last resumable checkpoint. OUT is locked (by rank 0 under
    torchrun) until the run ends."""
    ft, info = run.finetune, dataclasses.replace(run.task)
    for name in ("model", "train", "out"):
        if getattr(ft, name) is None:
            raise LmforgeError(f"no finetune.{name}: give --{name} (or finetune.{name} in the config)")
    check_output_dir(ft.out, {"--model": ft.model, "--train": ft.train, "--eval": ft.eval})
    task = get_task(info.task)
    if ft.class_weights and not task.class_labels:
        raise LmforgeError(f"--class-weights is for label classes; {task.name} predicts positions: leave it out")
    device = distributed.setup(resolve_device(ft.device), ft.batch_size)
    distributed.mute_other_ranks()
    with run_lock(ft.out) if distributed.is_main() else contextlib.nullcontext():
        return _run_finetune(ft, info, task, device, resume)


@dataclass
class Setup:
    """What a fine-tuning run trains: the task's model around the loaded backbone, and the encoded examples."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    run_cfg: RunConfig  # the backbone's family and architecture, saved with every checkpoint
    train_features: list[dict]
    eval_examples: list | None
    eval_features: list[dict] | None


def set_up(ft: FinetuneConfig, info: TaskConfig, task: Task, device: torch.device) -> Setup:
    """Reads the data, loads the backbone (any path lmforge.load takes; a fine-tuned model leaves its head), fills
    in the task config (labels, pooling, max_seq_len), builds the head and encodes the examples."""
    train_examples = task.read(Path(ft.train), columns_of(info))
    eval_examples = task.read(Path(ft.eval), columns_of(info)) if ft.eval else None
    info.labels = task.labels(train_examples, ft.train)
    if eval_examples:
        task.check(eval_examples, info.labels, ft.eval)
    loaded = trainable(load(ft.model, device), "fine-tuning")
    backbone = loaded.model.backbone if loaded.task is not None else loaded.model
    pooler = loaded.pooler
    if loaded.task is not None and getattr(loaded.model, "pooler", None) is not None:
        pooler = loaded.model.pooler.state_dict()
    tokenizer, family = loaded.tokenizer, backbone.family
    tokenizer.backend.no_padding()  # a Hugging Face tokenizer.json may pad or cut every text to a fixed length
    tokenizer.backend.no_truncation()
    info.pooling = info.pooling or ("cls" if family == "bert" else "last")
    info.max_seq_len = min(info.max_seq_len or task.max_seq_len, backbone.cfg.max_seq_len)
    task.setup(backbone, tokenizer, info)
    torch.manual_seed(ft.seed)  # the head's initial weights and every dropout mask
    model = task.build_head(backbone, info)
    if pooler is not None and getattr(model, "pooler", None) is not None:
        model.pooler.load_state_dict(pooler)
    check_fits(sum(p.numel() for p in model.parameters()), device)
    run_cfg = RunConfig(family=family, model=backbone.cfg, data=DataConfig(tokenizer=tokenizer.kind))
    train_features = task.encode(train_examples, tokenizer, family, info, labelled=True)
    eval_features = task.encode(eval_examples, tokenizer, family, info, labelled=True) if eval_examples else None
    return Setup(model.to(device).train(), tokenizer, run_cfg, train_features, eval_examples, eval_features)


class BestKeeper:
    """Evaluates on the eval data and keeps the best model as OUT/step-NNNNNN; counts evaluations without
    improvement for early stopping. Its `state` goes into every resumable checkpoint."""

    def __init__(self, setup: Setup, task: Task, info: TaskConfig, ft: FinetuneConfig, device, metrics: MetricsLog):
        self.setup, self.task, self.info, self.ft, self.device, self.metrics = setup, task, info, ft, device, metrics
        self.extra = {"task": dataclasses.asdict(info), "finetune": dataclasses.asdict(ft)}
        self.state = {"value": -math.inf, "step": 0, "report": None, "stale": 0, "evaluated": -1}

    def keep(self, step: int) -> None:
        s = self.setup
        if distributed.is_main():
            save_checkpoint(
                self.ft.out,
                step,
                s.model,
                s.run_cfg,
                s.tokenizer,
                keep_last=1,
                extra=self.extra,
                files=self.task.files(),
            )

    def evaluate(self, step: int) -> bool:
        """Scores the model, keeps it when best; True once patience runs out."""
        s, task, best = self.setup, self.task, self.state
        pad_id = pad_id_of(s.tokenizer)
        probs = predict_features(
            s.model, s.eval_features, pad_id, 2 * self.ft.batch_size, self.device, task, s.tokenizer
        )
        report = task.score(self.info, s.eval_examples, s.eval_features, probs)
        self.metrics.write({"step": step, f"eval_{task.metric}": report[task.metric]})
        log(f"step {step}: eval {task.metric} {report[task.metric]:.4f}")
        best["evaluated"] = step
        if report[task.metric] > best["value"]:
            best.update(value=report[task.metric], step=step, report=report, stale=0)
            self.keep(step)
        else:
            best["stale"] += 1
        if self.out_of_patience():
            log(f"no improvement in {best['stale']} evaluations: stopping early at step {step}")
            return True
        return False

    def out_of_patience(self) -> bool:
        return bool(self.ft.patience) and self.state["stale"] >= self.ft.patience

    def report(self) -> dict | None:
        """The kept model's evaluation, with where it comes from; None without eval data."""
        if self.setup.eval_features is None:
            return None
        where = {"checkpoint": str(self.ft.out), "data": str(self.ft.eval), "task": self.task.name}
        return self.state["report"] | where | {"step": self.state["step"]}


def _run_finetune(
    ft: FinetuneConfig, info: TaskConfig, task: Task, device: torch.device, resume: bool
) -> FinetuneResult:
    out = Path(ft.out)
    existing = find_latest(out / RESUME) if resume else None
    if find_latest(out) is not None and existing is None:
        hint = "it has no resumable state: " if resume else ""
        raise LmforgeError(f"{out} already holds a checkpoint: {hint}choose another --out")
    s = set_up(ft, info, task, device)
    ckpt = load_checkpoint(existing, with_state=True) if existing is not None else None
    if ckpt is not None and not same_tokenizer(ckpt.tokenizer, s.tokenizer):  # its weights learned other ids
        raise LmforgeError(
            f"cannot resume from {existing}: its tokenizer differs from that of {ft.model}; resume with the --model "
            "the run started from, or choose a new --out"
        )
    per_step = ft.batch_size * ft.grad_accum_steps
    total = ft.max_steps or math.ceil(ft.epochs * math.ceil(len(s.train_features) / per_step))
    warmup = round(ft.warmup * total) if ft.warmup < 1 else int(ft.warmup)
    optimizer = adamw(param_groups(s.model, ft.weight_decay, ft.layer_lr_decay), ft.lr, (0.9, 0.999), device)
    weight = class_weights(s.train_features, len(info.labels)) if ft.class_weights else None
    sampler = FeatureSampler(
        s.train_features, ft.batch_size, pad_id_of(s.tokenizer), ft.shuffle, ft.seed, weight, distributed.rank(),
        distributed.world_size(), task.collate,
    )  # fmt: skip
    step = restore_state(ckpt, s.run_cfg, s.model, optimizer, sampler) if ckpt is not None else 0
    metrics = MetricsLog(out / "metrics.jsonl", keep_until=step, enabled=distributed.is_main())
    keeper = BestKeeper(s, task, info, ft, device, metrics)
    if ckpt is not None:
        keeper.state = ckpt.state["best"]
        log(f"resuming from {existing} at step {step}")
    loss_fn = distributed.data_parallel(s.model, task.loss(weight), device, ft.grad_accum_steps, find_unused=True)
    log(
        f"fine-tuning {s.run_cfg.family} ({s.model.backbone.num_parameters() / 1e6:.1f}M parameters) for "
        f"{task.name} with {len(info.labels)} labels on {len(s.train_features):,} examples: {total} steps of "
        f"{per_step}, device {device}"
    )

    def save(at: int) -> Path:
        return save_state(
            out / RESUME, at, s.model, optimizer, sampler, s.run_cfg, s.tokenizer, 1, keeper.extra,
            {"best": keeper.state},
        )  # fmt: skip

    def evaluate(at: int) -> bool:
        stop = keeper.evaluate(at)
        if at < total and not ft.save_every:  # without save_every, every evaluation is a point to resume from
            save(at)
        return stop

    hooks = Hooks(
        lr=lambda at: linear_lr(at, total, warmup, ft.lr), save=save,
        evaluate=evaluate if s.eval_features is not None else None,
        throughput=lambda dt: {"samples_per_s": per_step / dt},
    )  # fmt: skip
    eval_every = ft.eval_every or math.ceil(len(s.train_features) / per_step)
    settings = LoopSettings(
        total, ft.grad_accum_steps, ft.grad_clip, ft.dtype, ft.log_every, eval_every, ft.save_every,
        ft.max_nonfinite, ft.progress and distributed.is_main(), "finetune", ft.grid_intensity,
    )  # fmt: skip
    result = fit(s.model, optimizer, sampler, loss_fn, device, out, step, settings, hooks, metrics)
    if s.eval_features is None:
        keeper.state["step"] = result.step
        keeper.keep(result.step)
    elif keeper.state["evaluated"] != result.step:
        keeper.evaluate(result.step)
    report = keeper.report()
    if distributed.is_main():
        if report is not None:
            write_report(report, out / "eval")
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        if not result.stopped or keeper.out_of_patience():
            shutil.rmtree(out / RESUME, ignore_errors=True)  # finished: nothing left to resume
    distributed.barrier()
    return FinetuneResult(
        find_latest(out), keeper.state["step"], result.step, task.metric, report,
        sampler.rows / max(result.train_s, 1e-9), result.train_s,
    )  # fmt: skip
