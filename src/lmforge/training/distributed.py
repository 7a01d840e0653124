"""Data-parallel training under torchrun: process group setup, DDP or FSDP wrapping, rank-0-only side effects.

The model file knows nothing of ranks: parallelism is applied here, from outside. `train.batch_size` is the global
batch; every rank draws the same block offsets from the same seeded sampler and trains on its own slice of rows, so
with gradients averaged the run follows the single-process one up to float rounding, and checkpoints move freely
between world sizes. Checkpoints are always written whole (one safetensors file) by rank 0.
"""

from __future__ import annotations

import atexit
import os
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from lmforge.checkpoint.files import check_weights, load_weights, unique_state_dict
from lmforge.errors import LmforgeError


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 prepares data, writes checkpoints, metrics and plots, and prints."""
    return rank() == 0


def setup(device: torch.device, batch_size: int) -> torch.device:
    """Joins the process group torchrun describes in RANK/WORLD_SIZE/LOCAL_RANK (gloo on CPU, NCCL on CUDA) and
    returns this rank's device; a plain process (no torchrun) is a world of one and nothing changes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device
    _check_batch(batch_size, world)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(cleanup)
    return device


def mute_other_ranks() -> None:
    """One set of results: ranks other than 0 print nothing to stdout (stderr stays, so every rank's errors show).
    Recipes call it after setup; their progress bars are rank 0's alone too (see is_main)."""
    if not is_main():
        sys.stdout = open(os.devnull, "w")


def _check_batch(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise LmforgeError(
            f"train.batch_size ({batch_size}) is the global batch and must divide by the number of processes "
            f"({world}); pick a multiple of {world}"
        )


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. prepares the data); the others wait, then run it and find the work done, or
    meet the same error as rank 0 and report it themselves."""
    if is_main():
        try:
            yield
        finally:
            barrier()
    else:
        barrier()
        yield


def _all_reduce(value: float, op) -> float:
    if not dist.is_initialized():
        return value
    x = torch.tensor([value], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(x, op=op)
    return x.item()


def all_reduce_mean(value: float) -> float:
    """The mean over ranks of a per-rank number (a loss over this rank's rows becomes the global batch's loss)."""
    return _all_reduce(value, dist.ReduceOp.SUM) / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a signal reaches ranks at slightly different steps)."""
    return bool(_all_reduce(float(flag), dist.ReduceOp.MAX))


def _is_fsdp(model: nn.Module) -> bool:
    if "torch.distributed.fsdp" not in sys.modules:  # nothing is sharded then, and importing it takes 0.5 s
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def place(model: nn.Module, device: torch.device, parallel: str) -> nn.Module:
    """The model on this rank's device; with parallel=fsdp and several ranks, each Transformer block and then the rest
    are sharded with fully_shard, so no rank ever holds the whole model, its gradients or its optimizer state."""
    if parallel != "fsdp" or world_size() == 1:
        return model.to(device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from lmforge.nn import TransformerBlock

    mesh = init_device_mesh(device.type, (world_size(),))
    for block in [m for m in model.modules() if isinstance(m, TransformerBlock)]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if hasattr(model, "hidden"):  # the fused LM-head loss calls model.hidden, not forward
        register_fsdp_forward_method(model, "hidden")
    return model


class _LossModule(nn.Module):
    """loss_fn(model, *batch) as a module's forward, so that DDP sees the step (its hooks run in forward)."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *batch):
        return self.loss_fn(self.model, *batch)


class _DataParallelLoss:
    """Called like loss_fn(model, *batch); gradients are all-reduced (averaged) on the last micro-step only."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel, grad_accum_steps: int):
        self.ddp, self.grad_accum_steps, self.calls = ddp, grad_accum_steps, 0

    def __call__(self, model, *batch):
        self.calls += 1
        self.ddp.require_backward_grad_sync = self.calls % self.grad_accum_steps == 0  # as nanoGPT does
        return self.ddp(*batch)


def data_parallel(model: nn.Module, loss_fn, device: torch.device, grad_accum_steps: int, find_unused: bool = False):
    """loss_fn, through DistributedDataParallel when there are several ranks (FSDP already syncs in its hooks).
    find_unused: some parameters get no gradient (a fine-tuned backbone's MLM head)."""
    if world_size() == 1 or _is_fsdp(model):
        return loss_fn
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(
        _LossModule(model, loss_fn), device_ids=ids, find_unused_parameters=find_unused
    )
    return _DataParallelLoss(ddp, grad_accum_steps)


def _aliases(model: nn.Module) -> dict[str, str]:
    """Tied parameters: each second name -> the name it is stored under (tok_emb.weight for a tied LM head)."""
    first, aliases = {}, {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's order: index i of a plain optimizer state dict is names[i]."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights (tied ones once) and the optimizer state dict in the single-process layout, gathered to rank 0's CPU
    under FSDP (a collective: every rank calls it; only rank 0 gets the tensors)."""
    if not _is_fsdp(model):  # every rank holds it all; rank 0 alone copies it
        return (unique_state_dict(model), optimizer.state_dict()) if is_main() else ({}, {})
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options).get("state", {})
    aliases, names = _aliases(model), _param_names(model, optimizer)
    state = {i: by_name[n] for i, n in enumerate(names) if n in by_name}
    weights = {k: v.contiguous() for k, v in weights.items() if k not in aliases}
    return weights, {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict, where: str) -> None:
    """Loads single-process weights and optimizer state into a plain, DDP-wrapped or FSDP-sharded model."""
    if not _is_fsdp(model):
        load_weights(model, weights, where)
        optimizer.load_state_dict(optim)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    aliases, names = _aliases(model), _param_names(model, optimizer)
    check_weights({k: v.shape for k, v in model.state_dict().items() if k not in aliases}, weights, where)
    full = {**weights, **{alias: weights[name] for alias, name in aliases.items()}}
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, full, options=options)
    by_name = {
        "state": {names[int(i)]: s for i, s in optim["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=options)


def torchrun_args(nproc: int, argv: list[str]) -> list[str]:
    """torchrun's arguments for nproc workers on this machine (a private rendezvous, so parallel runs do not collide)
    running `lmforge ARGV` without its --nproc."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "lmforge", *rest]


def launch(nproc: int, argv: list[str], batch_size: int) -> int:
    """Runs torchrun's agent in this process, which starts the workers and relays signals to them; returns the exit
    code: 0 when they finish or stop on a signal (after saving), 2 when a worker explained a user mistake."""
    if nproc < 1:
        raise LmforgeError(f"--nproc {nproc}: give the number of processes, at least 1")
    if "LOCAL_RANK" in os.environ:
        raise LmforgeError("--nproc starts torchrun itself; under torchrun leave it out (--nproc-per-node sets it)")
    _check_batch(batch_size, nproc)
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(torchrun_args(nproc, argv))
    except SignalException:  # relayed to the workers, which saved a checkpoint and stopped
        return 0
    except ChildFailedError as e:  # the worker printed its error; a traceback from torchrun would add nothing
        worker, failure = e.get_first_failure()
        if failure.exitcode != 2:
            print(
                f"lmforge: worker {worker} failed (exit code {failure.exitcode}); see its output above", file=sys.stderr
            )
        return 2 if failure.exitcode == 2 else 1
    return 0
