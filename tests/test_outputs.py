"""Where verbs write: every output option refuses, in one line with exit code 2 and before any work, an existing file
where a directory goes (or the reverse), a path under a regular file and its own input; no file it read changes."""

import os

import pytest
from helpers import sentiment_rows, tiny_checkpoint

from lmforge.atomic import check_output_dir, check_output_file
from lmforge.cli.main import main
from lmforge.errors import LmforgeError


def test_an_output_file_is_checked_against_inputs_directories_and_files(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text\n")
    (tmp_path / "link.csv").symlink_to(data)
    assert check_output_file(tmp_path / "new" / "out.jsonl", {"--input": data}) == tmp_path / "new" / "out.jsonl"
    with pytest.raises(LmforgeError, match="--output .*link.csv is --input itself"):
        check_output_file(tmp_path / "link.csv", {"--input": data})
    with pytest.raises(LmforgeError, match="is a directory"):
        check_output_file(tmp_path)
    with pytest.raises(LmforgeError, match="data.csv, which is a file"):
        check_output_file(data / "deeper" / "out.npy", flag="--output")


def test_an_output_directory_is_checked_against_inputs_and_files(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("text\n")
    assert check_output_dir(tmp_path / "run", {"--data": data, "--eval": None}) == tmp_path / "run"
    assert check_output_dir(tmp_path) == tmp_path  # an existing directory: resuming, or adding to it
    with pytest.raises(LmforgeError, match="--out .*corpus.txt is --data itself"):
        check_output_dir(data, {"--data": data})
    with pytest.raises(LmforgeError, match="--to-hf .*corpus.txt is a file: give a directory"):
        check_output_dir(data, flag="--to-hf")
    with pytest.raises(LmforgeError, match="corpus.txt, which is a file"):
        check_output_dir(data / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only directory")
def test_a_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(LmforgeError, match="not writable"):
        check_output_dir(locked / "run")
    with pytest.raises(LmforgeError, match="not writable"):
        check_output_file(locked / "out.npy")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input a verb reads, tiny: a corpus, labelled data, texts, a pretrained and a fine-tuned checkpoint, a
    Hugging Face directory, and a regular file to misuse as a directory."""
    from lmforge.checkpoint.convert import convert_to_hf

    d = tmp_path_factory.mktemp("inputs")
    (d / "corpus.txt").write_text("the cat sat on the mat.\n" * 100)
    (d / "train.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in sentiment_rows(16)))
    (d / "texts.txt").write_text("the film\nwas good\n")
    (d / "file.txt").write_text("a regular file\n")
    tiny_checkpoint(d / "bert", "bert")
    convert_to_hf(d / "bert", d / "hf")
    finetune = ["finetune", "--model", d / "bert", "--train", d / "train.csv", "--out", d / "ft", "--max-steps", "1"]
    assert main([str(a) for a in finetune + ["--batch-size", "8", "--no-progress", "--device", "cpu"]]) == 0
    return d


# verb: (argv before the output option, the output option, the path that is the wrong kind, the input it reads)
VERBS = {
    "train": (["train", "--config", "char-small", "--data", "{d}/corpus.txt", "--max-steps", "1", "--no-progress"],
              "--out", "{d}/file.txt", "{d}/corpus.txt"),
    "quickstart": (["quickstart", "--data", "{d}/corpus.txt", "--max-steps", "1"], "--out", "{d}/file.txt",
                   "{d}/corpus.txt"),
    "data prepare": (["data", "prepare", "--input", "{d}/corpus.txt", "--no-progress"], "--out", "{d}/file.txt",
                     "{d}/corpus.txt"),
    "finetune": (["finetune", "--model", "{d}/bert", "--train", "{d}/train.csv", "--max-steps", "1", "--no-progress"],
                 "--out", "{d}/file.txt", "{d}/train.csv"),
    "evaluate": (["evaluate", "{d}/ft", "--data", "{d}/train.csv", "--device", "cpu"], "--out", "{d}/file.txt",
                 "{d}/train.csv"),
    "explain": (["explain", "{d}/ft", "--text", "the film", "--steps", "2", "--device", "cpu"], "--out",
                "{d}/file.txt", "{d}/ft"),
    "convert --to-hf": (["convert", "{d}/bert"], "--to-hf", "{d}/file.txt", "{d}/bert"),
    "convert --from-hf": (["convert", "--from-hf", "{d}/hf"], "--out", "{d}/file.txt", "{d}/hf"),
    "embed": (["embed", "{d}/bert", "--input", "{d}/texts.txt"], "--output", "{d}/bert", "{d}/texts.txt"),
    "predict": (["predict", "{d}/ft", "--input", "{d}/train.csv", "--device", "cpu"], "--output", "{d}/bert",
                "{d}/train.csv"),
}  # fmt: skip
CASES = {  # which path the output option gets, and a word of the one line that refuses it
    "wrong kind": (lambda wrong, own: wrong, "is a"),
    "under a file": (lambda wrong, own: "{d}/file.txt/out", "which is a file"),
    "its own input": (lambda wrong, own: own, "itself"),
}


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("verb", VERBS)
def test_every_output_option_refuses_a_path_it_cannot_or_must_not_write(inputs, capsys, verb, case):
    argv, option, wrong, own = VERBS[verb]
    pick, word = CASES[case]
    before = snapshot(inputs)
    code = main([a.format(d=inputs) for a in [*argv, option, pick(wrong, own)]])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lmforge: error:"), err
    assert option in lines[0] and word in lines[0], lines[0]
    assert snapshot(inputs) == before
