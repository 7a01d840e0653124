"""The fast training step (oneDNN products, the fused LM-head cross-entropy, fused AdamW, glibc keeping freed memory)
learns what a plain fp32 step learns, and the loop says where a step's time goes and how close it runs to the peak."""

import copy
import ctypes
import json
import platform

import pytest
import torch
import torch.nn.functional as F
from helpers import onednn_or_skip
from torch import nn

from lmforge import hardware
from lmforge.config import GPTConfig, TrainConfig, load_config
from lmforge.kernels import linear as linear_module
from lmforge.kernels.linear import Linear
from lmforge.models import GPT
from lmforge.objectives.losses import causal_lm_loss
from lmforge.recipes import pretrain
from lmforge.training.callbacks import MetricsLog
from lmforge.training.device import keep_freed_memory
from lmforge.training.loop import Hooks, LoopSettings, fit
from lmforge.training.optim import build_optimizer, lr_at

STEPS = 50
VOCAB, SEQ, BATCH = 65, 32, 8


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Counting sequences (start and stride drawn per row from a seeded generator): learnable from two tokens."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        start = torch.randint(0, VOCAB, (BATCH, 1), generator=g)
        stride = torch.randint(1, 4, (BATCH, 1), generator=g)
        seq = (start + stride * torch.arange(SEQ + 1)) % VOCAB
        batches.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return batches


class _Sampler:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next(self):
        self.i += 1
        return self.batches[self.i - 1]


def _reference_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the full logits of the model's own forward: no fused head, no fused loss."""
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def test_fifty_fused_steps_learn_what_an_unfused_reference_learns(tmp_path, monkeypatch):
    """50 steps of the real loop (apply_kernels with oneDNN's training products forced on any CPU, the fused LM-head
    cross-entropy, fused AdamW, clipping at 1.0, the cosine schedule) against 50 steps of nn.Linear, full logits,
    F.cross_entropy and torch's single-tensor AdamW on the same batches: every step's loss, and the loss of the
    weights after the 50th update, agree within 1e-3, and the loss has fallen far (so agreement is not trivial)."""
    real = onednn_or_skip()
    calls = []
    monkeypatch.setattr(linear_module, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(linear_module, "_onednn_rows", (1, 2**62))

    torch.manual_seed(0)
    fast = GPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=64, max_seq_len=SEQ, dropout=0.0))
    reference = copy.deepcopy(fast)
    t = TrainConfig(lr=3e-3, min_lr=3e-4, warmup_steps=5, max_steps=STEPS, weight_decay=0.1, grad_clip=1.0)
    batches = _batches(STEPS)
    held_out = _batches(STEPS + 1)[-1]

    # the fast side: the one training loop
    device = torch.device("cpu")
    settings = LoopSettings(STEPS, grad_clip=t.grad_clip, dtype="fp32", log_every=1, progress=False)
    hooks = Hooks(lr=lambda step: lr_at(step, t), save=lambda step: tmp_path)
    result = fit(
        fast, build_optimizer(fast, t, device), _Sampler(batches), lambda m, b: (causal_lm_loss(m, *b), {}),
        device, tmp_path, 0, settings, hooks, MetricsLog(tmp_path / "metrics.jsonl", 0),
    )  # fmt: skip
    fast_losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.step == STEPS and len(fast_losses) == STEPS and result.train_loss == fast_losses[-1]
    assert any(type(m) is Linear for m in fast.modules()), "the loop did not apply the kernels"
    assert calls, "the fast side's products never ran on oneDNN"

    # the reference: plain nn.Linear, full logits, unfused AdamW with the same groups
    assert not any(isinstance(m, Linear) for m in reference.modules())
    params = list(reference.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=t.lr, betas=(t.beta1, t.beta2), foreach=False, fused=False,
    )  # fmt: skip
    reference.train()
    reference_losses = []
    for step, (x, y) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, t)
        loss = _reference_loss(reference, x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(reference.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        reference_losses.append(loss.item())

    assert fast_losses[0] == pytest.approx(reference_losses[0], abs=1e-5)  # the same model and batch before learning
    worst = max(abs(a - b) for a, b in zip(fast_losses, reference_losses, strict=True))
    assert worst < 1e-3, (worst, fast_losses, reference_losses)
    with torch.no_grad():
        fast.eval(), reference.eval()
        after = [_reference_loss(model, *held_out).item() for model in (fast, reference)]
    assert abs(after[0] - after[1]) < 1e-3, after
    assert after[1] < reference_losses[0] - 1.0, (reference_losses[0], after)  # it learned: ln 65 = 4.17 at first


def _tiny_run(corpus, tmp_path, monkeypatch, steps: int, *overrides: str):
    monkeypatch.setattr(hardware, "this_machine", lambda *a, **k: hardware.Hardware("this", 0.1, 0.4, 8.0, 10.0, 20.0))
    cfg = load_config("char-small", [
        "model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.max_seq_len=32", "train.batch_size=8",
        "train.warmup_steps=2", "train.eval_every=0", "train.eval_steps=1", "train.progress=false",
        "train.device=cpu", "train.dtype=fp32", f"train.max_steps={steps}", f"data.path={corpus}",
        f"train.out={tmp_path / 'run'}", *overrides,
    ])  # fmt: skip
    return pretrain.train(cfg)


def test_the_loop_reports_where_each_step_spends_its_time(corpus, tmp_path, monkeypatch):
    """ms_per_step: the total and its four phases, none negative, summing to the total; on a model of a few layers
    the forward and backward pass takes the most."""
    result = _tiny_run(corpus, tmp_path, monkeypatch, 8, "train.log_every=8")
    ms = result.ms_per_step
    assert set(ms) == {"total", "data", "forward_backward", "optimizer", "other"}, ms
    phases = {name: value for name, value in ms.items() if name != "total"}
    assert all(value >= 0 for value in ms.values()), ms
    assert ms["total"] > 0 and sum(phases.values()) == pytest.approx(ms["total"], rel=1e-6), ms
    assert max(phases, key=phases.get) == "forward_backward", ms
    assert ms["total"] < 1000 * result.wall_s, (ms, result.wall_s)  # per step: below the whole run's time


def test_log_records_carry_mfu_against_the_measured_peak(corpus, tmp_path, monkeypatch):
    """Each training record's mfu is its achieved FLOP/s (tflops) over lmforge.hardware.peak_flops for the run's
    device and precision: this CPU's measured fp32 peak (here a stand-in measurement: 0.1 TFLOP/s fp32, 0.4 bf16)."""
    _tiny_run(corpus, tmp_path, monkeypatch, 4, "train.log_every=2")
    peak = hardware.peak_flops(torch.device("cpu"), "fp32")
    assert peak == 1e11
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if '"tokens_per_s"' in line]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0
        assert r["mfu"] == pytest.approx(r["tflops"] * 1e12 / peak, rel=1e-6), r
        assert 0 < r["mfu"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_sets_glibc_options():
    """On glibc every mallopt call succeeds, and a 64 MB block (above glibc's largest dynamic mmap threshold, 32 MB)
    then comes from the heap, not from a fresh mmap."""
    assert keep_freed_memory() is True
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return  # glibc < 2.33: the return value is all there is to check

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )]  # fmt: skip

    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    try:
        assert block
        assert libc.mallinfo2().hblks == before, "a 64 MB block was mmapped: the mmap threshold was not raised"
    finally:
        libc.free(block)


def test_train_compile_reports_its_compilation_and_trains_as_eager_does(corpus, tmp_path, monkeypatch, capsys):
    """train.compile: the step runs compiled (AOTAutograd's eager backend here, to keep the test fast), the log says
    how long compiling took and where it is cached, and the losses are eager's up to rounding."""
    from lmforge.training import compiled as compiled_module

    eager = _tiny_run(corpus, tmp_path / "eager", monkeypatch, 4)
    capsys.readouterr()
    traced, real_compile = [], torch.compile

    def compile_for_test(fn):
        traced.append(fn)
        return real_compile(fn, backend="aot_eager")

    monkeypatch.setattr(compiled_module.torch, "compile", compile_for_test)
    result = _tiny_run(corpus, tmp_path / "compiled", monkeypatch, 4, "train.compile=true")
    err = capsys.readouterr().err
    assert len(traced) == 1, "compiled once, on the first step"
    assert "train.compile: compiled the step (forward, loss and backward) in" in err and "cached in" in err, err
    assert "train.compile: the first step took" in err, err
    assert result.train_loss == pytest.approx(eager.train_loss, abs=1e-5)


def test_a_compiler_that_fails_leaves_one_line_and_the_run_trains_eagerly(corpus, tmp_path, monkeypatch, capsys):
    from lmforge.training import compiled as compiled_module

    eager = _tiny_run(corpus, tmp_path / "eager", monkeypatch, 4)
    capsys.readouterr()

    def broken(fn):
        def run(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

        return run

    monkeypatch.setattr(compiled_module.torch, "compile", broken)
    result = _tiny_run(corpus, tmp_path / "compiled", monkeypatch, 4, "train.compile=true")
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if "torch.compile failed" in line]
    assert len(failures) == 1 and "No working C++ compiler found" in failures[0], err
    assert "training eagerly" in failures[0] and "more detail" not in err
    assert result.train_loss == eager.train_loss  # the same eager steps, bit for bit
