"""Fine-tuning on the one training loop: exact resume after SIGKILL, DDP, configs, and a task of a test's own."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import sentiment_csvs, tiny_checkpoint
from safetensors.torch import load_file

from lmforge.cli.main import main
from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, Example
from lmforge.errors import LmforgeError
from lmforge.models.heads import SequenceClassifier
from lmforge.tasks import TASKS, Task, register
from lmforge.tasks.classification import encode_classification
from lmforge.tasks.metrics import classification_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    sentiment_csvs(d, 96, 24)
    tiny_checkpoint(d / "bert", "bert")  # dropout 0.1: resume must restore the random-number generators
    tiny_checkpoint(d / "bert-nodrop", "bert", dropout=0.0)  # DDP slices a batch: the same masks need no dropout
    return d


def finetune_argv(data: Path, out: Path, *extra: str, model: str = "bert") -> list[str]:
    return [
        "finetune", "--model", str(data / model), "--train", str(data / "train.csv"), "--out", str(out),
        "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--device", "cpu", *extra,
    ]  # fmt: skip


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / (run / "latest").read_text().strip() / "model.safetensors")


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_a_finetune_killed_with_sigkill_and_resumed_ends_bitwise_equal(data, tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    argv = finetune_argv(data, killed, "--max-steps", "40", "--save-every", "3")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", *argv], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "resume" / "latest").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.05))  # anywhere in a step, or while a checkpoint is written
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed: give it more steps"
    finally:
        proc.kill()
        proc.wait()
    half_written = list((killed / "resume").glob(".tmp-step-*"))  # when the kill landed while a save was writing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*argv, "--resume"]) == 0
    assert bool(half_written) == any("half-written" in str(w.message) for w in caught)
    assert main(finetune_argv(data, straight, "--max-steps", "40", "--save-every", "3")) == 0
    final, again = weights(straight), weights(killed)
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    assert sorted(losses(killed)) == sorted(losses(straight)) == list(range(10, 41, 10))
    assert not (killed / "resume").exists(), "a finished run leaves nothing to resume"


def test_finetune_on_two_processes_follows_one_process(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--max-steps", "20", "--model", str(data / "bert-nodrop")]
    argv = [*finetune_argv(data, one), *common]
    assert main(argv) == 0
    argv = [*finetune_argv(data, two), *common, "--nproc", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", *argv], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = losses(two), losses(one)
    assert sorted(got) == sorted(want) == [10, 20]
    for step in want:
        assert abs(got[step] - want[step]) < 1e-5, (step, got[step], want[step])


def test_finetune_reads_a_config_with_set_overrides_and_saves_it_whole(data, tmp_path):
    config = tmp_path / "sst.yaml"
    config.write_text(
        f"task:\n  task: classification\n  text_column: text\nfinetune:\n  model: {data / 'bert'}\n"
        f"  train: {data / 'train.csv'}\n  eval: {data / 'dev.csv'}\n  out: {tmp_path / 'run'}\n  epochs: 1\n"
        "  progress: false\n  device: cpu\n"
    )
    sets = ["--set", "finetune.max_steps=4", "--set", "task.pooling=mean", "--set", "finetune.lr=1e-4"]
    assert main(["finetune", "--config", str(config), *sets, "--batch-size", "16"]) == 0
    saved = (tmp_path / "run" / (tmp_path / "run" / "latest").read_text().strip() / "config.yaml").read_text()
    import yaml

    saved = yaml.safe_load(saved)
    assert saved["task"]["pooling"] == "mean" and saved["task"]["text_column"] == "text"
    assert saved["finetune"]["max_steps"] == 4 and saved["finetune"]["lr"] == 1e-4
    assert saved["finetune"]["batch_size"] == 16 and saved["finetune"]["train"] == str(data / "train.csv")
    assert max(losses(tmp_path / "run")) == 4


@pytest.mark.parametrize(
    "yaml_text, sets, message",
    [
        ("finetune:\n  lrr: 1\n", [], "unknown key finetune.lrr"),
        ("", ["--set", "finetune.lr=-1"], "finetune.lr = -1.0 is out of range"),
        ("", ["--set", "task.pooling=max"], "task.pooling must be one of cls, mean, last"),
        ("training:\n  lr: 1\n", [], "unknown section 'training'"),
        ("", ["--set", "finetune.batch_size=two"], "finetune.batch_size must be int"),
    ],
)
def test_a_bad_finetune_config_field_is_one_line_exit_2(data, tmp_path, capsys, yaml_text, sets, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    argv = [
        "finetune",
        "--model",
        str(data / "bert"),
        "--train",
        str(data / "train.csv"),
        "--out",
        str(tmp_path / "out"),
    ]
    code = main([*argv, "--config", str(config), *sets])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


class EvenLength(Task):
    """A toy task written here only: a line's label is whether it has an even number of words."""

    name, metric = "even_length", "accuracy"

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list[Example]:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise LmforgeError(f"{path} holds no lines")
        return [Example(n, t, None, ("even", "odd")[len(t.split()) % 2]) for n, t in enumerate(lines, start=1)]

    def labels(self, examples: list[Example], path) -> list[str]:
        return ["even", "odd"]

    def encode(self, examples, tokenizer, family: str, task: TaskConfig, labelled: bool) -> list[dict]:
        return encode_classification(examples, tokenizer, family, task.max_seq_len, task.labels)

    def build_head(self, backbone, task: TaskConfig):
        return SequenceClassifier(backbone, len(task.labels), task.pooling)

    def score(self, task: TaskConfig, examples, features, probs) -> dict:
        gold = [f["label"] for f in features]
        assert IGNORE not in gold
        return classification_metrics(gold, [int(p.argmax()) for p in probs], task.labels)

    def records(self, task: TaskConfig, examples, features, probs) -> list[dict]:
        return [
            {"text": ex.text, "label": task.labels[int(p.argmax())], "words": len(ex.text.split())}
            for ex, p in zip(examples, probs, strict=True)
        ]

    def example(self, text: str, pair: str | None, n: int) -> Example:
        return Example(n, text, pair, ("even", "odd")[len(text.split()) % 2])


def test_a_task_written_in_a_test_plugs_into_the_registry_and_the_cli(data, tmp_path, capsys):
    register(EvenLength())
    try:
        lines = [" ".join(["word"] * random.Random(i).randint(1, 6)) for i in range(64)]
        (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
        (tmp_path / "dev.txt").write_text("\n".join(lines[:16]) + "\n")
        out = tmp_path / "run"
        argv = [
            "finetune",
            "--task",
            "even_length",
            "--model",
            str(data / "bert"),
            "--train",
            str(tmp_path / "train.txt"),
        ]
        argv += ["--eval", str(tmp_path / "dev.txt"), "--out", str(out), "--max-steps", "6", "--no-progress"]
        assert main([*argv, "--device", "cpu", "--batch-size", "16"]) == 0
        assert "eval accuracy" in capsys.readouterr().out
        assert main(["evaluate", str(out), "--data", str(tmp_path / "dev.txt")]) == 0
        assert capsys.readouterr().out.startswith("accuracy ")
        assert main(["predict", str(out), "--text", "one two three"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["words"] == 3 and record["label"] in ("even", "odd")
    finally:
        TASKS.pop("even_length")
