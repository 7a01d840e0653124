"""AdamW's step and the gradients' norm on CPU in one C kernel each, over every tensor of a model at once.

torch's fused AdamW runs its kernel tensor by tensor, and get_total_norm a norm per tensor, each in a parallel region
of its own: on char-small's 51 tensors (0.8M weights, a 2-core Zen 4) the clipped step took 1.8 ms of a 43 ms
training step, and 0.4 ms in these kernels. The optimizer is torch.optim.AdamW, its state and state dict too; only
the step of fp32 CPU tensors changes, by fp32 rounding. Everything else (CUDA, other dtypes, amsgrad, maximize,
tensor learning rates, sparse or strided tensors, tensor subclasses) takes torch's step."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch.autograd.graph import increment_version

from lmforge.kernels.native import AdamwGroup, adamw_runs, adamw_step, sum_squares, sum_squares_runs

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _plain(x: torch.Tensor) -> bool:
    """An fp32 contiguous dense CPU tensor (or parameter) that the kernels can read through its address."""
    return (
        type(x) in _PLAIN_TYPES
        and x.dtype is torch.float32
        and x.is_cpu
        and x.layout is torch.strided
        and x.is_contiguous()
    )


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """torch.nn.utils.get_total_norm(grads): the 2-norm of all their elements, as a 0-dim fp32 tensor; one C pass
    over them where they are all fp32 CPU tensors."""
    if grads and all(_plain(g) for g in grads) and sum_squares_runs():
        return torch.tensor(math.sqrt(sum_squares(grads)), dtype=torch.float32)
    return torch.nn.utils.get_total_norm(grads)


def _unhooked(method: Callable) -> Callable:
    """torch.optim.AdamW.step without the step hooks and profiler range that torch wraps it in once any
    torch.optim.AdamW exists: this class's own step already runs inside them."""
    return method.__wrapped__ if getattr(method, "hooked", False) else method


def _undecorated(method: Callable) -> Callable:
    """torch.optim.Optimizer's method without its torch._disable_dynamo wrapper while torch._dynamo is not imported:
    nothing can be tracing the call then, and the wrapper's first call imports it (1.7 s on a 2-core Zen 4, in
    every training run that never compiles)."""
    return method if "torch._dynamo" in sys.modules else getattr(method, "__wrapped__", method)


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW (the same arguments, state and state dict) whose step over fp32 CPU tensors is one C kernel.
    It divides the gradients by `grad_scale` where set, as torch's fused step does (lmforge's clipping), but leaves
    them as they are where torch's writes the divided ones back."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # first: it may compute the gradients this step reads
            with torch.enable_grad():
                loss = closure()
        rows = self._rows()
        if rows is None:
            _unhooked(torch.optim.AdamW.step)(self)
            return loss
        tensors, groups = rows
        if tensors:
            scale = getattr(self, "grad_scale", None)
            adamw_step(tensors, groups, 1.0 if scale is None else float(scale))
            increment_version([row[0] for row in tensors])  # as an in-place update would: autograd's checks, caches
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad; dropping the gradients is a plain loop (torch's takes 0.1 ms over 51 tensors)."""
        if not set_to_none:
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def add_param_group(self, param_group: dict) -> None:
        _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def state_dict(self) -> dict:
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def _rows(self) -> tuple[list[tuple[torch.Tensor, ...]], list[AdamwGroup]] | None:
        """(param, grad, exp_avg, exp_avg_sq, step) of each parameter with a gradient, its state made as torch's fused
        step makes it, and its group's hyperparameters; None where torch's step has to run."""
        if getattr(self, "found_inf", None) is not None or not adamw_runs():
            return None
        tensors, groups = [], []
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                return None
            if isinstance(group["lr"], torch.Tensor):
                return None
            hyper = AdamwGroup(group["lr"], group["weight_decay"], *group["betas"], group["eps"])
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                row = (p, grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
                n = p.numel()  # the kernel reads and writes n elements of each tensor
                if not (grad.numel() == row[2].numel() == row[3].numel() == n and row[4].numel() == 1):
                    return None
                if not all(_plain(x) for x in row):
                    return None
                tensors.append(row)
                groups.append(hyper)
        if len({id(row[0]) for row in tensors}) < len(tensors):  # a parameter listed twice: torch steps it twice
            return None
        return tensors, groups
