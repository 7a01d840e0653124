"""The command line: each verb runs, and bad input gives one line, exit 2, no traceback, nothing half-written."""

import subprocess
import sys

import pytest

from lmforge.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmforge: error:"), err
    for word in words:
        assert word in lines[0]


@pytest.fixture
def trained(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(
        capsys, "train", "--config", "char-small", "--data", str(corpus), "--out", str(out), "--max-steps", "3",
        "--no-progress", "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.max_seq_len=16",
    )  # fmt: skip
    assert code == 0 and "saved" in stdout
    return out


def test_train_resume_and_generate(trained, capsys, corpus):
    code, out, _ = run(capsys, "generate", str(trained), "--prompt", "the ", "--max-new-tokens", "8", "--seed", "0")
    assert code == 0 and out.startswith("the ") and len(out.strip()) > 4
    code, out, _ = run(capsys, "generate", str(trained / "step-000003"), "--prompt", "the ", "--greedy", "--no-stream")
    assert code == 0 and out.startswith("the ")
    code, out, _ = run(
        capsys, "train", "--config", "char-small", "--data", str(corpus), "--out", str(trained), "--max-steps", "5",
        "--no-progress", "--resume", "--set", "model.n_layer=1", "--set", "model.d_model=32",
        "--set", "model.max_seq_len=16",
    )  # fmt: skip
    assert code == 0 and "step-000005" in out


def test_prompt_longer_than_context(trained, capsys):
    code, out, err = run(capsys, "generate", str(trained), "--prompt", "the mat " * 10)
    assert_one_line_error(code, err, "context is 16")
    assert out == ""


def test_checkpoint_missing_files(trained, capsys):
    (trained / "step-000003" / "model.safetensors").unlink()
    code, _, err = run(capsys, "generate", str(trained / "step-000003"))
    assert_one_line_error(code, err, "missing model.safetensors")


@pytest.mark.parametrize("content, words", [(b"", ["empty"]), (b"\x00\x01\x02binary\xff", ["binary"])])
def test_bad_data_files(tmp_path, capsys, content, words):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--config", "char-small", "--data", str(data), "--out", str(out))
    assert_one_line_error(code, err, *words)
    assert not out.exists() or not any(p.name.startswith(("step-", ".tmp")) for p in out.rglob("*"))


def test_missing_data_and_bad_config(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--config", "char-small", "--data", str(tmp_path / "none.txt"))
    assert_one_line_error(code, err, "not found")
    code, _, err = run(capsys, "train", "--config", "char-small", "--set", "train.lr=fast", "--data", "x")
    assert_one_line_error(code, err, "train.lr")
    code, _, err = run(capsys, "train", "--config", "char-small", "--set", "model.colour=blue", "--data", "x")
    assert_one_line_error(code, err, "model.colour")


def test_configs_and_data_prepare(tmp_path, capsys, corpus):
    code, out, _ = run(capsys, "configs")
    assert code == 0 and "char-small" in out and "gpt-small" in out
    code, out, _ = run(capsys, "data", "prepare", "--input", str(corpus), "--tokenizer", "bpe", "--vocab-size", "300",
                       "--out", str(tmp_path / "prep"), "--no-progress")  # fmt: skip
    assert code == 0
    assert {"train.bin", "val.bin", "meta.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "prep").iterdir()}


def test_console_script_entry_point_runs_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge", "generate", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not found" in proc.stderr


ENCODER = ["--no-progress", "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.max_seq_len=32",
           "--set", "data.vocab_size=400", "--set", "train.eval_every=0"]  # fmt: skip


def test_pretrain_resume_and_fill_mask(tmp_path, mixed_documents, capsys):
    out = tmp_path / "bert"
    code, stdout, _ = run(capsys, "pretrain", "--config", "bert-small", "--data", str(mixed_documents), "--out",
                          str(out), "--max-steps", "3", *ENCODER)  # fmt: skip
    assert code == 0 and "saved" in stdout and "validation: loss" in stdout and "nsp_acc" in stdout
    code, stdout, _ = run(capsys, "pretrain", "--config", "bert-small", "--data", str(mixed_documents), "--out",
                          str(out), "--max-steps", "5", "--resume", *ENCODER)  # fmt: skip
    assert code == 0 and "step-000005" in stdout
    code, stdout, _ = run(capsys, "fill-mask", str(out), "我喜欢喝[MASK]。", "--top-k", "3", "--device", "cpu")
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 3 and all(0 < float(line.split()[-1]) <= 1 for line in lines)
    code, stdout, _ = run(capsys, "fill-mask", str(out), "one the [MASK] lofega [MASK] the lofega.")
    assert code == 0 and "[MASK] 1 of 2:" in stdout and "[MASK] 2 of 2:" in stdout
    code, _, err = run(capsys, "fill-mask", str(out), "no mask here")
    assert_one_line_error(code, err, "no [MASK]")
    code, _, err = run(capsys, "generate", str(out), "--prompt", "the")
    assert_one_line_error(code, err, "holds a bert model")


def test_pretrain_and_train_refuse_the_other_family(tmp_path, corpus, capsys):
    code, _, err = run(capsys, "pretrain", "--config", "char-small", "--data", str(corpus), "--out", str(tmp_path))
    assert_one_line_error(code, err, "needs a bert or t5 or xlnet config", "xlnet-small")
    code, _, err = run(capsys, "train", "--config", "bert-small", "--data", str(corpus), "--out", str(tmp_path))
    assert_one_line_error(code, err, "needs a gpt or t5 config", "lmforge pretrain")
    code, out, _ = run(capsys, "configs")
    assert all(
        name in out
        for name in ("bert-small", "roberta-small", "albert-small", "t5-small", "transformer-mt", "xlnet-small")
    )


@pytest.fixture
def labelled(tmp_path):
    data = tmp_path / "dev.csv"
    data.write_text("text,label\nthe film was good,pos\n", encoding="utf-8")
    return data


@pytest.mark.parametrize("size", ["0", "-1"])
def test_a_batch_size_below_one_is_refused_before_the_model_loads(tmp_path, labelled, capsys, size):
    missing = str(tmp_path / "no-checkpoint")
    code, _, err = run(capsys, "evaluate", missing, "--data", str(labelled), "--batch-size", size)
    assert_one_line_error(code, err, "--batch-size")
    code, _, err = run(capsys, "predict", missing, "--text", "the film", "--batch-size", size)
    assert_one_line_error(code, err, "--batch-size")
    out = tmp_path / "pred.jsonl"
    code, _, err = run(capsys, "predict", missing, "--input", str(labelled), "--output", str(out), "--batch-size", size)
    assert_one_line_error(code, err, "--batch-size")
    assert not out.exists()


def test_a_directory_given_for_a_data_file_is_called_a_directory(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    missing = str(tmp_path / "no-checkpoint")
    code, _, err = run(capsys, "evaluate", missing, "--data", str(folder))
    assert_one_line_error(code, err, str(folder), "is a directory")
    code, _, err = run(capsys, "predict", missing, "--input", str(folder), "--output", str(tmp_path / "p.jsonl"))
    assert_one_line_error(code, err, str(folder), "is a directory")
    code, _, err = run(capsys, "embed", missing, "--input", str(folder))
    assert_one_line_error(code, err, str(folder), "is a directory")


@pytest.mark.parametrize("flag, value", [("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"),
                                         ("--repetition-penalty", "nan"), ("--top-p", "nan")])  # fmt: skip
def test_generate_refuses_bad_sampling_before_printing_the_prompt(tmp_path, capsys, flag, value):
    from helpers import tiny_checkpoint

    tiny_checkpoint(tmp_path / "gpt", "gpt")
    code, out, err = run(capsys, "generate", str(tmp_path / "gpt"), "--prompt", "the film", flag, value)
    assert_one_line_error(code, err, flag)
    assert out == ""


@pytest.mark.parametrize(
    "verb", ["generate", "chat", "embed", "fill-mask", "predict", "evaluate", "translate", "summarize", "serve"]
)
def test_every_verb_with_dtype_offers_compile(verb, capsys):
    with pytest.raises(SystemExit) as raised:
        main([verb, "--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert "--dtype" in out and "--compile" in out and "torch.compile" in out
