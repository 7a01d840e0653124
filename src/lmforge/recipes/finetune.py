"""Fine-tuning a pretrained backbone on labelled data: epochs, warmup + linear decay, evaluation every N steps,
early stopping, and the best checkpoint (by the eval metric) kept in OUT.

Tasks live in TASKS; a task names its eval metric, and its data reader, encoder and head are looked up by the same
name (data.labelled.ENCODERS, checkpoint.build_head), so relation extraction and QA slot in beside these two.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmforge.checkpoint.files import (
    build_head,
    find_latest,
    finetuned_from,
    load_checkpoint,
    model_from,
    save_checkpoint,
)
from lmforge.checkpoint.hub import from_pretrained, resolve
from lmforge.config import DataConfig, FinetuneConfig, RunConfig, TaskConfig
from lmforge.data.labelled import IGNORE, Columns, check_labels, collate, discover_labels, read_examples
from lmforge.data.relation import add_markers
from lmforge.errors import LmforgeError
from lmforge.inference.evaluate import score, write_report
from lmforge.inference.predict import encode, pad_id_of, predict_features
from lmforge.interop.hf import read_weights
from lmforge.models import GPT, Bert
from lmforge.models.extraction import add_token_rows
from lmforge.plots import plot_losses
from lmforge.tokenizer import Tokenizer
from lmforge.training.loop import MetricsLog, StopRequest, adamw, resolve_device

# task -> the eval metric that picks the best checkpoint
TASKS = {"classification": "accuracy", "ner": "f1", "relation": "macro_f1", "qa": "f1"}


def load_backbone(
    path: str | Path, device: torch.device
) -> tuple[GPT | Bert, Tokenizer, RunConfig, dict[str, torch.Tensor] | None]:
    """The one place a --model becomes a backbone: an lmforge checkpoint (lmforge pretrain / train, or a fine-tuned
    model, whose head is left behind), a Hugging Face model directory or all-MiniLM-L6-v2. Also returns a BERT's
    pooler when the backbone lacks one: the fine-tuned model's, or a Hugging Face encoder's pretrained one that the
    backbone dropped (a checkpoint without a sentence head), for the classifier to start from, as transformers' does.
    """
    source, pooler = resolve(path), None
    if source.is_dir() and not (source / "config.json").is_file():  # an lmforge checkpoint
        ckpt = load_checkpoint(source)
        if "task" in ckpt.extra:
            head, tokenizer, _ = finetuned_from(ckpt, device)
            model, own = head.backbone, getattr(head, "pooler", None)
            pooler = own and own.state_dict()
        else:
            model, tokenizer, _ = model_from(ckpt, device)
    else:
        model, tokenizer = from_pretrained(path, device)
    family = "bert" if isinstance(model, Bert) else "gpt"
    cfg = RunConfig(family=family, model=model.cfg, data=DataConfig(tokenizer=tokenizer.kind))
    tokenizer.backend.no_padding()  # a Hugging Face tokenizer.json may pad or cut every text to a fixed length
    tokenizer.backend.no_truncation()
    if family == "bert" and model.pooler is None and (source / "config.json").is_file():
        weights = read_weights(source)
        prefix = next((p for p in ("pooler.dense.", "bert.pooler.dense.") if p + "weight" in weights), None)
        pooler = prefix and {"weight": weights[prefix + "weight"].float(), "bias": weights[prefix + "bias"].float()}
    return model, tokenizer, cfg, pooler


def linear_lr(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warmup from 0, then linear decay to 0 at `total` (BERT's schedule; transformers' linear one)."""
    if step < warmup:
        return lr * step / warmup
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def layer_depth(name: str, n_layer: int) -> int:
    """0 for the embeddings, i + 1 for block i, n_layer + 1 for the rest (final norm, pooler, head)."""
    block = re.search(r"\.blocks\.(\d+)\.", name)
    if block:
        return int(block.group(1)) + 1
    return 0 if re.search(r"backbone\.(embeddings|tok_emb|pos_emb)\.", name) else n_layer + 1


def param_groups(model: torch.nn.Module, weight_decay: float, layer_lr_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; with layer_lr_decay < 1 each layer below the head learns
    at decay**(distance from the top) of the lr (Clark et al., 2020), so general lower layers move least."""
    n_layer = model.backbone.cfg.n_layer
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        scale = layer_lr_decay ** (n_layer + 1 - layer_depth(name, n_layer))
        groups.setdefault((scale, weight_decay if p.dim() >= 2 else 0.0), []).append(p)
    return [{"params": ps, "lr_scale": s, "weight_decay": wd} for (s, wd), ps in groups.items()]


def class_weights(features: list[dict], n_labels: int) -> torch.Tensor:
    """n / (n_labels * count): each class weighs as much in the loss as a balanced data set would give it."""
    labels = torch.tensor([x for f in features for x in (f["label"] if isinstance(f["label"], list) else [f["label"]])])
    counts = torch.bincount(labels[labels != IGNORE], minlength=n_labels).float()
    return counts.sum() / (n_labels * counts.clamp(min=1))


def batches(features: list[dict], batch_size: int, pad_id: int, shuffle: bool, seed: int) -> Iterator[dict]:
    """Padded batches, epoch after epoch: a new order each epoch from the seed, or file order without shuffle."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(features), generator=g).tolist() if shuffle else list(range(len(features)))
        for start in range(0, len(order), batch_size):
            yield collate([features[i] for i in order[start : start + batch_size]], pad_id)


@dataclass
class FinetuneResult:
    checkpoint: Path
    step: int  # the step of the kept (best) checkpoint
    steps: int  # the steps trained
    metric: str
    report: dict | None  # the kept checkpoint's evaluation; None without eval data
    train_samples_per_s: float
    train_s: float


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


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
    """Fine-tunes a backbone for the task on train_path; keeps the best checkpoint on eval_path (or the last one
    without eval data) in OUT, with metrics.jsonl, loss.png and OUT/eval/report.{json,md} (and confusion.png).
    max_seq_len defaults to 384 tokens for qa (a window of a long context), 128 for the other tasks. SIGINT/SIGTERM
    stop at the end of the current step, which is evaluated, and the run finishes as at its end."""
    ft, columns, out = ft or FinetuneConfig(), columns or Columns(), Path(out)
    if task not in TASKS:
        raise LmforgeError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if task == "qa" and ft.class_weights:
        raise LmforgeError("--class-weights is for label classes; qa predicts positions: leave it out")
    if find_latest(out) is not None:
        raise LmforgeError(f"{out} already holds a checkpoint: choose another --out")
    device = resolve_device(ft.device)
    train_examples = read_examples(train_path, task, columns)
    eval_examples = read_examples(eval_path, task, columns) if eval_path else None
    labels = discover_labels(train_examples, task, train_path)
    if eval_examples:
        check_labels(eval_examples, labels, eval_path)
    backbone, tokenizer, run_cfg, pooler = load_backbone(model_path, device)
    markers, new_markers = add_markers(tokenizer) if task == "relation" else ([], False)
    if new_markers:
        add_token_rows(backbone, markers)
    info = TaskConfig(
        task, labels, pooling or ("cls" if run_cfg.family == "bert" else "last"),
        min(max_seq_len or (384 if task == "qa" else 128), backbone.cfg.max_seq_len), columns.text,
        columns.text_pair, columns.label, columns.head, columns.tail, markers, doc_stride, max_answer_len,
    )  # fmt: skip
    torch.manual_seed(ft.seed)  # the head's initial weights and every dropout mask
    model = build_head(backbone, info)
    if pooler is not None and getattr(model, "pooler", None) is not None:
        model.pooler.load_state_dict(pooler)
    model = model.to(device)
    train_features = encode(train_examples, tokenizer, model, info, labelled=True)
    eval_features = encode(eval_examples, tokenizer, model, info, labelled=True) if eval_examples else None
    steps_per_epoch = math.ceil(len(train_features) / ft.batch_size)
    total = ft.max_steps or math.ceil(ft.epochs * steps_per_epoch)
    warmup = round(ft.warmup * total) if ft.warmup < 1 else int(ft.warmup)
    eval_every = ft.eval_every or steps_per_epoch
    optimizer = adamw(param_groups(model, ft.weight_decay, ft.layer_lr_decay), ft.lr, (0.9, 0.999), device)
    weight = class_weights(train_features, len(labels)).to(device) if ft.class_weights else None
    pad_id = pad_id_of(tokenizer)
    extra = {"task": dataclasses.asdict(info), "finetune": dataclasses.asdict(ft)}
    log = MetricsLog(out / "metrics.jsonl", keep_until=0)
    metric = TASKS[task]
    _log(
        f"fine-tuning {run_cfg.family} ({model.backbone.num_parameters() / 1e6:.1f}M parameters) for {task} with "
        f"{len(labels)} labels on {len(train_features):,} examples: {total} steps of {ft.batch_size}, device {device}"
    )
    best, best_step, best_report, stale, train_s, step, samples = -math.inf, 0, None, 0, 0.0, 0, 0
    stream = batches(train_features, ft.batch_size, pad_id, ft.shuffle, ft.seed)
    model.train()
    with (
        StopRequest() as stop,
        tqdm(total=total, disable=not ft.progress, unit="step", dynamic_ncols=True) as bar,
    ):
        while step < total:
            t0 = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) for k, v in next(stream).items()}
            lr = linear_lr(step, total, warmup, ft.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = F.cross_entropy(logits.flatten(0, -2), batch["labels"].flatten(), weight, ignore_index=IGNORE)
            loss.backward()
            if ft.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), ft.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples += len(batch["input_ids"])
            train_s += time.perf_counter() - t0
            bar.update(1)
            if step % 10 == 0 or step == total:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                log.write({"step": step, "loss": loss.item(), "lr": lr, "samples_per_s": samples / train_s})
            if eval_features is not None and (step % eval_every == 0 or step == total or stop.requested):
                probs = predict_features(model, eval_features, pad_id, 2 * ft.batch_size, device)
                report = score(task, labels, eval_features, probs, eval_examples, max_answer_len)
                log.write({"step": step, f"eval_{metric}": report[metric]})
                _log(f"step {step}: eval {metric} {report[metric]:.4f}")
                if report[metric] > best:
                    best, best_step, best_report, stale = report[metric], step, report, 0
                    save_checkpoint(out, step, model, run_cfg, tokenizer, keep_last=1, extra=extra)
                else:
                    stale += 1
                    if ft.patience and stale >= ft.patience:
                        _log(f"no improvement in {stale} evaluations: stopping early at step {step}")
                        break
            if stop.requested:  # SIGINT/SIGTERM: evaluated above; finish as at the end, with the best so far
                _log(f"interrupted: stopping at step {step} of {total}")
                break
    if eval_features is None:
        best_step = step
        save_checkpoint(out, step, model, run_cfg, tokenizer, keep_last=1, extra=extra)
    else:
        best_report |= {"checkpoint": str(out), "data": str(eval_path), "task": task, "step": best_step}
        write_report(best_report, out / "eval")
    plot_losses(out / "metrics.jsonl", out / "loss.png")
    return FinetuneResult(
        find_latest(out), best_step, step, metric, best_report, samples / max(train_s, 1e-9), train_s
    )  # fmt: skip
