"""Crash safety: a run killed with SIGKILL at an arbitrary step resumes to weights bitwise equal to the uninterrupted
run; SIGTERM saves a checkpoint at the current step and exits 0; non-finite steps are skipped, then stop the run."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmforge.objectives.families
from lmforge.checkpoint import find_latest
from lmforge.cli.main import main
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.objectives.losses import causal_lm_loss
from lmforge.recipes.pretrain import train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and on a busy machine they lose a lot; the killed subprocess runs
    with one thread too, so that both halves of the resumed run compute exactly as the uninterrupted one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def wait_for_checkpoint(out: Path, at_least: int, proc=None, timeout: float = 120) -> int:
    """The step of the newest checkpoint once it reaches at_least (polling the `latest` pointer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        name = (out / "latest").read_text().strip() if (out / "latest").is_file() else ""
        if name and int(name.split("-")[1]) >= at_least:
            return int(name.split("-")[1])
        assert proc is None or proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step {at_least} after {timeout} s")


@pytest.mark.parametrize(
    "verb, config, overrides",
    [("train", "char-small", "tiny_overrides"), ("pretrain", "bert-small", "encoder_overrides")],
)
def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(verb, config, overrides, tmp_path, request):
    """Every family: a run killed anywhere and resumed ends with the weights of one never stopped (dropout on)."""
    settings = [*request.getfixturevalue(overrides), "train.max_steps=60", "train.save_every=5", "train.eval_every=0"]
    settings.append("model.dropout=0.1")
    killed_out, straight_out = tmp_path / "run", tmp_path / "straight"
    argv = [a for s in settings for a in ("--set", s)]
    cmd = [sys.executable, "-m", "lmforge", verb, "--config", config, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_checkpoint(killed_out, 10, proc)
        time.sleep(random.uniform(0, 0.05))  # anywhere in a step, or in the middle of writing a checkpoint
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed: give it more steps"
    finally:
        proc.kill()
        proc.wait()
    # the killed run's lock file names it; the kernel released its flock, so the resume below takes the lock over
    assert (killed_out / ".lock").read_text() == f"{proc.pid}\n"
    half_written = list(killed_out.glob(".tmp-step-*"))  # when the kill landed while a checkpoint was being written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(load_config(config, settings), resume=True)
    assert bool(half_written) == any("half-written" in str(w.message) for w in caught)
    straight = train(load_config(config, [*settings, f"train.out={straight_out}"]))
    assert resumed.step == straight.step == 60
    final, again = (
        load_file(straight.checkpoint / "model.safetensors"),
        load_file(resumed.checkpoint / "model.safetensors"),
    )
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    records = [json.loads(x) for x in (killed_out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 61))
    assert not list(killed_out.glob(".tmp-*")), "a checkpoint half-written by the kill is cleared by the next save"
    assert not (killed_out / ".lock").exists(), "a run that ends removes its lock"


def test_sigterm_saves_the_current_step_and_exits_0(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    sender = threading.Thread(target=lambda: (wait_for_checkpoint(out, 2), os.kill(os.getpid(), signal.SIGTERM)))
    sender.start()
    code = main([
        "train", "--config", "char-small", "--data", str(corpus), "--out", str(out), "--max-steps", "100000",
        "--save-every", "2", "--no-progress", "--set", "model.n_layer=1", "--set", "model.d_model=32",
        "--set", "model.max_seq_len=16", "--set", "train.eval_every=0",
    ])  # fmt: skip
    sender.join()
    _, err = capsys.readouterr()
    assert code == 0
    step = int(err.split("stopped at step ")[1].split(";")[0])
    assert 2 <= step < 100000 and find_latest(out) == out / f"step-{step:06d}"
    assert (out / f"step-{step:06d}" / "train_state.safetensors").is_file()


def nan_after(calls: dict, bad):
    """causal_lm_loss, but NaN on the micro-steps for which bad(n) holds (n counts calls from 1)."""

    def loss_fn(model, x, y):
        calls["n"] += 1
        loss = causal_lm_loss(model, x, y)
        return loss * float("nan") if bad(calls["n"]) else loss

    return loss_fn


def test_nonfinite_steps_are_skipped_and_counted(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(lmforge.objectives.families, "causal_lm_loss", nan_after({"n": 0}, lambda n: n in (3, 4)))
    result = train(load_config("char-small", [*tiny_overrides, "train.max_steps=8", "train.eval_every=0"]))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "loss" in r] == [0, 0, 1, 2, 2, 2, 2, 2]
    state = load_file(result.checkpoint / "train_state.safetensors")
    assert state["optim.0.step"].item() == 6  # the optimizer stepped 8 - 2 times
    assert all(torch.isfinite(w).all() for w in load_file(result.checkpoint / "model.safetensors").values())
    logs = [r for r in records if "loss" in r]
    assert {"peak_mem_mb", "mem_weights_mb", "mem_activations_mb"} <= logs[0].keys() & logs[-1].keys()
    assert "peak_mem_mb" not in logs[3]


def test_nonfinite_in_a_row_stops_and_keeps_the_last_good_checkpoint(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(lmforge.objectives.families, "causal_lm_loss", nan_after({"n": 0}, lambda n: n > 5))
    settings = [
        *tiny_overrides,
        "train.max_steps=20",
        "train.save_every=5",
        "train.max_nonfinite=3",
        "train.eval_every=0",
    ]
    with pytest.raises(LmforgeError, match=r"3 steps in a row, the last step 8, .*last good checkpoint: .*step-000005"):
        train(load_config("char-small", settings))
    out = tmp_path / "run"
    assert find_latest(out) == out / "step-000005" and sorted(p.name for p in out.glob("step-*")) == ["step-000005"]
