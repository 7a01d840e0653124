"""Run safety: one run per output directory (a lock that names its holder), a save that clears only the temporaries
of dead processes and leaves nothing half-written when it fails, a resumed fine-tuning that keeps its tokenizer, and
models too large for the machine refused before anything is allocated."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import sentiment_rows, tiny_checkpoint

import lmforge.checkpoint.files
import lmforge.recipes.pretrain
import lmforge.training.memory
from lmforge.checkpoint import find_latest
from lmforge.cli.main import main
from lmforge.config import load_config, shipped_configs
from lmforge.errors import LmforgeError
from lmforge.recipes.pretrain import train
from lmforge.training.memory import check_fits, parameter_count

pytestmark = pytest.mark.usefixtures("one_thread")

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run/.lock, as a run in progress does, until the test ends."""
    (tmp_path / "run").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run" / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline() == "locked\n"
    yield proc
    proc.stdin.close()
    proc.wait()


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(word in err for word in words), err


def test_train_on_an_out_in_use_is_refused_naming_the_holder(holder, tiny_overrides, tmp_path, capsys):
    with pytest.raises(LmforgeError, match=f"run is in use by process {holder.pid}"):
        train(load_config("char-small", [*tiny_overrides, "train.max_steps=2"]))
    argv = ["train", "--config", "char-small", *(a for s in tiny_overrides for a in ("--set", s)), "--max-steps", "2"]
    one_line_error(main(argv), capsys.readouterr().err, f"process {holder.pid}", "choose another output directory")
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]  # nothing of ours was written


def finetune_argv(d, model, out, *extra) -> list[str]:
    return [
        "finetune", "--model", str(model), "--train", str(d / "train.csv"), "--out", str(out), "--batch-size", "8",
        "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip


@pytest.fixture
def finetune_data(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in sentiment_rows(48)))
    tiny_checkpoint(tmp_path / "bert", "bert")
    return tmp_path


def test_finetune_on_an_out_in_use_is_refused(holder, finetune_data, tmp_path, capsys):
    code = main(finetune_argv(finetune_data, tmp_path / "bert", tmp_path / "run", "--max-steps", "2"))
    one_line_error(code, capsys.readouterr().err, f"in use by process {holder.pid}")


def test_the_lock_is_gone_after_a_run_and_a_refused_run_leaves_no_out(tiny_overrides, tmp_path):
    train(load_config("char-small", [*tiny_overrides, "train.max_steps=2"]))
    assert not (tmp_path / "run" / ".lock").exists()
    with pytest.raises(LmforgeError, match="not found"):
        train(load_config("char-small", [*tiny_overrides, f"data.path={tmp_path / 'missing.txt'}",
                                         f"train.out={tmp_path / 'new'}"]))  # fmt: skip
    assert not (tmp_path / "new").exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: no process has this pid (until the system reuses it)
    return proc.pid


def test_a_save_clears_the_temporaries_of_dead_processes_only(tmp_path):
    out = tmp_path / "run"
    dead, live = out / f".tmp-step-000001.{dead_pid()}", out / f".tmp-step-000001.{os.getppid()}"
    for stale in (dead, live):
        stale.mkdir(parents=True)
        (stale / "config.yaml").write_text("partial")
    dead_pointer, live_pointer = out / f".tmp-latest.{dead_pid()}", out / f".tmp-latest.{os.getppid()}"
    for pointer in (dead_pointer, live_pointer):  # a kill while `latest` was being written leaves a file
        pointer.write_text("step-0000")
    tiny_checkpoint(out, "gpt")
    assert not dead.exists() and not dead_pointer.exists(), "left by a killed run: cleared"
    assert (live / "config.yaml").is_file(), "another live process is writing it: left alone"
    assert live_pointer.is_file()
    with pytest.warns(UserWarning, match="half-written"):
        assert find_latest(out) == out / "step-000001"


def test_a_failed_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = tiny_checkpoint(out, "gpt")
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lmforge.checkpoint.files, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        tiny_checkpoint(out, "gpt")  # the same step again
    assert sorted(p.name for p in out.iterdir()) == ["latest", "step-000001"]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before


def swap_two_ids(tokenizer_json) -> None:
    """Gives two ordinary tokens each other's ids: a tokenizer as large as before that maps text to other ids."""
    raw = json.loads(tokenizer_json.read_text())
    vocab = raw["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tokenizer_json.write_text(json.dumps(raw))


def test_finetune_resume_refuses_a_model_with_another_tokenizer(finetune_data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "bert", other)
    swap_two_ids(other / "step-000001" / "tokenizer.json")
    out = tmp_path / "run"

    def stop_once_resumable():
        deadline = time.monotonic() + 60
        while not (out / "resume" / "latest").is_file() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=stop_once_resumable)
    sender.start()
    assert main(finetune_argv(finetune_data, tmp_path / "bert", out, "--max-steps", "1000", "--save-every", "1")) == 0
    sender.join()
    capsys.readouterr()
    code = main(finetune_argv(finetune_data, other, out, "--max-steps", "20", "--save-every", "1", "--resume"))
    one_line_error(code, capsys.readouterr().err, "cannot resume", "its tokenizer differs", str(other))


def test_a_model_too_large_for_the_machine_is_refused_before_it_is_built(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(lmforge.training.memory, "device_memory", lambda device: (1000, "this machine"))
    cfg = [*tiny_overrides, "train.max_steps=2"]
    with pytest.raises(
        LmforgeError, match=r"needs 0\.\d GB .* than the 0\.0 GB of this machine.*LMFORGE_ALLOW_LARGE=1"
    ):
        train(load_config("char-small", cfg))
    assert find_latest(tmp_path / "run") is None
    monkeypatch.setenv("LMFORGE_ALLOW_LARGE", "1")  # the user insists
    assert train(load_config("char-small", cfg)).step == 2


def test_an_absurd_size_is_refused_in_a_moment_and_every_shipped_config_fits():
    cfg = load_config("gpt-small", ["model.n_layer=48", "model.d_model=8192", "model.n_head=64"])
    start = time.perf_counter()
    n = parameter_count(cfg.family, cfg.model)  # on the meta device: no memory allocated
    assert n > 38e9
    if 16 * n < lmforge.training.memory.device_memory(torch.device("cpu"))[0]:
        pytest.skip("this machine has the memory to train it")
    with pytest.raises(LmforgeError, match=r"needs 625\.\d GB"):
        check_fits(n, torch.device("cpu"))
    assert time.perf_counter() - start < 5
    for name in shipped_configs():
        cfg = load_config(name, [])
        check_fits(parameter_count(cfg.family, cfg.model), torch.device("cpu"))
