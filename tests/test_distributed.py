"""Data-parallel training on CPU with 2 processes (gloo, via torchrun): the same loss curve as one process for the
same global batch and seed, and checkpoints that move between world sizes (1 -> 2 under FSDP, 2 -> 1)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from lmforge.checkpoint import load_model
from lmforge.config import load_config
from lmforge.data import BatchSampler
from lmforge.errors import LmforgeError
from lmforge.recipes.pretrain import train
from lmforge.training.distributed import torchrun_args

SETTINGS = [*TINY, "train.eval_every=0", "train.save_every=10", "train.keep_last=5", "train.max_steps=20"]


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def torchrun(out: Path, corpus: Path, *extra: str) -> None:
    """`lmforge train --nproc 2`: the CLI re-launches itself under torchrun with 2 CPU workers."""
    sets = [a for s in [*SETTINGS, f"data.path={corpus}", f"train.out={out}"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "lmforge", "train", "--config", "char-small", "--nproc", "2", *sets, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("model: ") == 1, "only rank 0 prints"


def resume_from_step_10(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "step-000020")
    (dst / "latest").write_text("step-000010\n")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference run (on one thread, as each torchrun worker), and the corpus it read."""
    root = tmp_path_factory.mktemp("single")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"the {w} sat on the mat {i % 7}.\n" for i, w in enumerate(["cat", "dog"] * 200)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(load_config("char-small", [*SETTINGS, f"data.path={corpus}", f"train.out={root / 'run'}"]))
    torch.set_num_threads(threads)
    return root / "run", corpus


def assert_same_curve(out: Path, reference: Path, steps) -> None:
    got, want = losses(out), losses(reference)
    assert sorted(got) == list(range(1, 21))
    for step in steps:
        assert abs(got[step] - want[step]) < 1e-5, (step, got[step], want[step])


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-5)


def test_ddp_matches_one_process_and_resumes_on_one(single, tmp_path):
    reference, corpus = single
    torchrun(tmp_path / "ddp", corpus)
    assert_same_curve(tmp_path / "ddp", reference, range(1, 21))
    assert (tmp_path / "ddp" / "loss.png").is_file()
    resume_from_step_10(tmp_path / "ddp", tmp_path / "two_to_one")  # 2 -> 1
    cfg = load_config("char-small", [*SETTINGS, f"data.path={corpus}", f"train.out={tmp_path / 'two_to_one'}"])
    resumed = train(cfg, resume=True)
    assert_same_curve(tmp_path / "two_to_one", reference, range(11, 21))
    assert_close_weights(resumed.checkpoint, reference / "step-000020")


def test_fsdp_resumes_a_one_process_checkpoint_and_saves_one_file(single, tmp_path):
    reference, corpus = single
    resume_from_step_10(reference, tmp_path / "one_to_two")  # 1 -> 2, sharded
    torchrun(tmp_path / "one_to_two", corpus, "--resume", "--set", "train.parallel=fsdp")
    assert_same_curve(tmp_path / "one_to_two", reference, range(11, 21))
    final = tmp_path / "one_to_two" / "step-000020"
    assert_close_weights(final, reference / "step-000020")
    model, _, _ = load_model(final)  # the same single-file format as a one-process run
    assert model.lm_head.weight is model.tok_emb.weight
    state = load_file(final / "train_state.safetensors")
    want = load_file(reference / "step-000020" / "train_state.safetensors")
    assert state.keys() == want.keys()
    torch.testing.assert_close(state["optim.0.exp_avg"], want["optim.0.exp_avg"], rtol=1e-3, atol=1e-6)


def test_ranks_slice_one_global_batch():
    tokens = np.arange(1000, dtype=np.uint16)
    whole = BatchSampler(tokens, 6, 8, seed=3)
    shards = [BatchSampler(tokens, 6, 8, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(3):
        x, y = whole.next()
        parts = [s.next() for s in shards]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_torchrun_args_and_batch_check(monkeypatch):
    args = torchrun_args(4, ["train", "--nproc", "4", "--config", "gpt-small", "--nproc=4", "--resume"])
    assert args == ["--standalone", "--nproc-per-node=4", "-m", "lmforge", "train", "--config", "gpt-small", "--resume"]
    from lmforge.training.distributed import launch

    with pytest.raises(LmforgeError, match=r"batch_size \(12\) is the global batch .* 5"):
        launch(5, ["train"], 12)
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(LmforgeError, match="under torchrun"):
        launch(2, ["train"], 12)
