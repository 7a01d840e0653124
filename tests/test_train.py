import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoint import find_latest, load_checkpoint, load_model
from lmforge.config import TrainConfig, load_config
from lmforge.errors import LmforgeError
from lmforge.recipes.pretrain import train
from lmforge.training.optim import lr_at


def test_lr_schedule_warmup_then_cosine():
    t = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, t) == pytest.approx(0.1)
    assert lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(60, t) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 0.9)
    assert lr_at(110, t) == pytest.approx(0.1)
    assert lr_at(500, t) == pytest.approx(0.1)


def test_training_learns_and_writes_a_complete_run(tiny_overrides, tmp_path):
    cfg = load_config("char-small", [*tiny_overrides, "train.max_steps=60", "train.lr=3e-3"])
    result = train(cfg)
    out = tmp_path / "run"
    assert result.checkpoint == out / "step-000060" == find_latest(out)
    assert {p.name for p in result.checkpoint.iterdir()} == {
        "config.yaml", "model.safetensors", "tokenizer.json", "train_state.json", "train_state.safetensors"
    }  # fmt: skip
    assert (out / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 60
    assert losses[-1] < 0.6 * losses[0]  # the structure is learnable
    assert any("val_loss" in r for r in records)
    model, tokenizer, run_cfg = load_model(out)
    assert run_cfg.model.vocab_size == tokenizer.vocab_size == model.cfg.vocab_size


def test_resume_is_exact(tiny_overrides, tmp_path):
    """A run resumed from its step-5 checkpoint ends bitwise equal to the uninterrupted run (dropout on)."""
    cfg = [*tiny_overrides, "train.max_steps=12", "train.save_every=5", "train.keep_last=5", "model.dropout=0.1"]
    straight = train(load_config("char-small", cfg))
    out = tmp_path / "run"
    final = load_file(straight.checkpoint / "model.safetensors")
    for later in ("step-000010", "step-000012"):
        shutil.rmtree(out / later)
    (out / "latest").write_text("step-000005\n")
    resumed = train(load_config("char-small", cfg), resume=True)
    again = load_file(resumed.checkpoint / "model.safetensors")
    assert final.keys() == again.keys()
    for name in final:
        assert torch.equal(final[name], again[name]), name
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))


def test_existing_run_needs_resume(tiny_overrides):
    cfg = load_config("char-small", [*tiny_overrides, "train.max_steps=2"])
    train(cfg)
    with pytest.raises(LmforgeError, match="--resume"):
        train(load_config("char-small", [*tiny_overrides, "train.max_steps=2"]))


def test_resume_refuses_a_different_model(tiny_overrides):
    train(load_config("char-small", [*tiny_overrides, "train.max_steps=2"]))
    with pytest.raises(LmforgeError, match="model config differs"):
        train(load_config("char-small", [*tiny_overrides, "train.max_steps=4", "model.d_model=16"]), resume=True)


def test_half_written_checkpoint_is_ignored(tiny_overrides, tmp_path):
    train(load_config("char-small", [*tiny_overrides, "train.max_steps=2"]))
    out = tmp_path / "run"
    (out / ".tmp-step-000003.999").mkdir()
    (out / ".tmp-step-000003.999" / "config.yaml").write_text("partial")
    with pytest.warns(UserWarning, match="half-written"):
        assert find_latest(out) == out / "step-000002"


def test_damaged_checkpoints_are_rejected(tiny_overrides, tmp_path):
    ckpt = train(load_config("char-small", [*tiny_overrides, "train.max_steps=2"])).checkpoint
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(LmforgeError, match="damaged"):
        load_model(ckpt)
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(LmforgeError, match="missing tokenizer.json"):
        load_checkpoint(ckpt)
    with pytest.raises(LmforgeError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_wrong_shape_names_the_tensor(tiny_overrides, tmp_path):
    ckpt = train(load_config("char-small", [*tiny_overrides, "train.max_steps=1"])).checkpoint
    cfg_path = ckpt / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("d_ff: 128", "d_ff: 64"))
    with pytest.raises(LmforgeError, match=r"ffn.up.weight.*shape \(128, 32\), expected \(64, 32\)"):
        load_model(ckpt)


def words_corpus(path, letters, seed):
    """Lines of random words over some letters: enough pairs for a 300-token byte-level BPE to fill its vocabulary."""
    import random

    rng = random.Random(seed)
    words = ["".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(300)]
    path.write_text("".join(" ".join(rng.choices(words, k=8)) + ".\n" for _ in range(400)), encoding="utf-8")
    return path


def test_resume_on_new_text_keeps_the_checkpoints_tokenizer(tmp_path, capsys):
    """A resumed model reads the ids it learned: the new text is tokenized with the checkpoint's BPE, not a new one."""
    from lmforge.cli.main import main

    a, b = words_corpus(tmp_path / "a.txt", "abcdefghijklm", 0), words_corpus(tmp_path / "b.txt", "nopqrstuvwxyz", 1)
    out = tmp_path / "r"
    tiny = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.max_seq_len=16", "--no-progress"]
    argv = ["train", "--config", "char-small", "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=300", *tiny]
    assert main([*argv, "--data", str(a), "--out", str(out), "--max-steps", "2"]) == 0
    assert main([*argv, "--data", str(b), "--out", str(out), "--max-steps", "4", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "with its tokenizer (300 tokens)" in err
    first, second = (out / "step-000002" / "tokenizer.json").read_text(), (out / "step-000004" / "tokenizer.json")
    assert second.read_text() == first


def test_resume_on_the_same_text_reuses_its_prepared_data(tmp_path):
    """The text the run started on is not tokenized again on resume: its cache holds the checkpoint's tokenizer."""
    from lmforge.cli.main import main

    a, out = words_corpus(tmp_path / "a.txt", "abcdefghijklm", 0), tmp_path / "r"
    tiny = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.max_seq_len=16", "--no-progress"]
    argv = ["train", "--config", "char-small", "--set", "data.tokenizer=bpe", "--set", "data.vocab_size=300", *tiny]
    assert main([*argv, "--data", str(a), "--out", str(out), "--max-steps", "2"]) == 0
    assert main([*argv, "--data", str(a), "--out", str(out), "--max-steps", "4", "--resume"]) == 0
    assert len([d for d in (out / "data").iterdir() if (d / "meta.json").is_file()]) == 1


def test_resume_refuses_data_prepared_with_another_tokenizer(tmp_path, tiny_overrides, corpus, capsys):
    from lmforge.cli.main import main
    from lmforge.data import prepare

    train(load_config("char-small", [*tiny_overrides, "train.max_steps=2"]))
    other = prepare([corpus], "bpe", tmp_path / "prepared", vocab_size=300, progress=False)
    argv = ["train", "--config", "char-small", *(a for s in tiny_overrides for a in ("--set", s)), "--resume"]
    capsys.readouterr()
    assert main([*argv, "--data", str(other), "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenized with another tokenizer" in err and "step-000002" in err
    assert find_latest(tmp_path / "run") == tmp_path / "run" / "step-000002"
