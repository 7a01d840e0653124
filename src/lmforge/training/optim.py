"""AdamW, its parameter groups and the learning-rate schedules: cosine for pretraining, linear for fine-tuning,
with layer-wise lr decay. Every group carries an lr_scale that the loop multiplies the schedule's lr by."""

from __future__ import annotations

import math
import re

import torch

from lmforge.config import TrainConfig
from lmforge.kernels.optim import AdamW, total_norm


def lr_at(step: int, t: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at max_steps, or (schedule inverse_sqrt) decay as
    lr * sqrt(warmup_steps / step), the original Transformer's schedule, never below min_lr."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "inverse_sqrt":
        return max(t.min_lr, t.lr * math.sqrt(max(1, t.warmup_steps) / (step + 1)))
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (t.lr - t.min_lr)


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


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices (and embeddings) only; biases and LayerNorm gains are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, t.lr, (t.beta1, t.beta2), device)


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel, one pass over each tensor's weights, gradient and moments, on CUDA and CPU alike;
    on CPU the foreach kernel makes about eight passes over memory instead (figures in docs/benchmarks.md), and
    lmforge's kernel (kernels.optim) makes that one pass over all the tensors at once."""
    if device.type == "cpu":
        return AdamW(groups, lr=lr, betas=betas, fused=True)
    fused = True if device.type == "cuda" else None  # other devices take torch's default kernel
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def clip_in_step(optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    """The total norm of the gradients of the optimizer's parameters, with the gradients clipped to max_norm (0: not
    clipped) as clip_grad_norm_ does.
    A fused AdamW step divides each gradient by its grad_scale as it reads it, so there the clipping costs no pass of
    its own over the gradients (about 0.3 ms of char-small's 26 ms step); other optimizers scale them first. The
    factor is this step's (optimizer.grad_scale, as GradScaler's): apply_step drops it."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = total_norm([p.grad for p in params])
    value = norm.item()
    if max_norm:
        if all(group.get("fused") for group in optimizer.param_groups):
            factor = (value + 1e-6) / max_norm
            factor = factor if not factor < 1.0 else 1.0  # a NaN stays NaN, as clamp's
            optimizer.grad_scale = torch.tensor(factor, dtype=torch.float32, device=norm.device)  # the step's device
        else:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return value


def apply_step(optimizer: torch.optim.Optimizer, update: bool = True) -> None:
    """The optimizer's step (unless update is False: a skipped step), then clip_in_step's factor dropped (it holds
    for one step) and the gradients freed."""
    if update:
        optimizer.step()
    optimizer.__dict__.pop("grad_scale", None)
    optimizer.zero_grad(set_to_none=True)
