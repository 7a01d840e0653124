import json

import pytest
from helpers import tiny_checkpoint, tiny_t5

from lmforge.checkpoint import save_checkpoint
from lmforge.checkpoint.loader import load
from lmforge.cli.main import main
from lmforge.config import DataConfig, RunConfig
from lmforge.generation.seq2seq import generate_seq2seq
from lmforge.tasks.generation_metrics import bleu_chrf, rouge

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCES = ["the cat sat on the mat", "a dog ran", "the red bird sings", "blue fox jumps"]
TARGETS = ["die katze sass auf der matte", "ein hund lief", "der rote vogel singt", "blauer fuchs springt"]


@pytest.fixture(scope="module")
def t5_checkpoint(tmp_path_factory):
    """An lmforge checkpoint of a random T5 of a few thousand parameters, its tokenizer a BPE with <pad> and </s>."""
    model, tokenizer = tiny_t5((SOURCES + TARGETS) * 4, 300, 12)
    run = RunConfig(family="t5", model=model.cfg, data=DataConfig(tokenizer="bpe"))
    return save_checkpoint(tmp_path_factory.mktemp("t5") / "run", 1, model, run, tokenizer)


def outputs(checkpoint, texts, **options):
    """What the verbs should write: the library's outputs, one line each."""
    loaded = load(checkpoint)
    return [" ".join(t.splitlines()) for t in generate_seq2seq(loaded.model, loaded.tokenizer, texts, **options)]


def test_translate_text_streams_one_line_and_beams_print_one_line_each(t5_checkpoint, capsys):
    assert main(["translate", str(t5_checkpoint), "--text", SOURCES[0], "--num-beams", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out == outputs(t5_checkpoint, SOURCES[:1], num_beams=1)[0] + "\n"
    assert main(["translate", str(t5_checkpoint), "--text", SOURCES[0], "--text", "", "--num-beams", "2"]) == 0
    assert capsys.readouterr().out.split("\n") == [outputs(t5_checkpoint, SOURCES[:1], num_beams=2)[0], "", ""]


def test_translate_file_keeps_one_line_per_line_and_refuses_to_overwrite_its_input(t5_checkpoint, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text(f"{SOURCES[0]}\n\n{SOURCES[1]}\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    args = ["translate", str(t5_checkpoint), "--input", str(source), "--output", str(out), "--num-beams", "3"]
    assert main(args) == 0
    expected = outputs(t5_checkpoint, [SOURCES[0], SOURCES[1]], num_beams=3)
    assert out.read_text(encoding="utf-8") == f"{expected[0]}\n\n{expected[1]}\n"
    assert f"wrote 3 lines to {out}" in capsys.readouterr().out
    assert main([*args[:4], "--output", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is --input itself" in err
    assert source.read_text(encoding="utf-8") == f"{SOURCES[0]}\n\n{SOURCES[1]}\n"


def test_summarize_searches_beams_without_repeated_trigrams(t5_checkpoint, tmp_path, capsys):
    assert main(["summarize", str(t5_checkpoint), "--text", SOURCES[2], "--text", SOURCES[3], "--no-progress"]) == 0
    expected = outputs(t5_checkpoint, SOURCES[2:], num_beams=4, no_repeat_ngram_size=3)
    assert capsys.readouterr().out == "".join(f"{t}\n" for t in expected)


def test_evaluate_scores_the_val_split_of_a_parallel_directory(t5_checkpoint, tmp_path, capsys):
    data = tmp_path / "mt"
    data.mkdir()
    (data / "val.xx").write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    (data / "val.yy").write_text("\n".join(TARGETS) + "\n", encoding="utf-8")
    report_dir = tmp_path / "report"
    args = ["evaluate", str(t5_checkpoint), "--data", str(data), "--source", "xx", "--target", "yy"]
    assert main([*args, "--out", str(report_dir), "--num-beams", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    hypotheses = outputs(t5_checkpoint, SOURCES, num_beams=2)
    scores = bleu_chrf(hypotheses, TARGETS) | rouge(hypotheses, TARGETS)
    assert printed[0] == f"bleu {scores['bleu']:.2f}, chrf {scores['chrf']:.2f}, rougeL {scores['rougeL']:.2f}"
    assert printed[1] == scores["bleu_signature"]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["examples"] == 4 and report["bleu"] == pytest.approx(scores["bleu"])
    assert (report_dir / "hypotheses.txt").read_text(encoding="utf-8") == "".join(f"{h}\n" for h in hypotheses)
    assert "bleu_signature" in (report_dir / "report.md").read_text()


def test_evaluate_takes_a_t5_checkpoint_without_a_task_as_an_encoder_decoder(t5_checkpoint, tmp_path, capsys):
    data = tmp_path / "pairs.tsv"
    data.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in zip(SOURCES, TARGETS, strict=True)))
    assert main(["evaluate", str(t5_checkpoint), "--data", str(data), "--out", str(tmp_path / "r")]) == 0
    hypotheses = outputs(t5_checkpoint, SOURCES, num_beams=4)
    assert capsys.readouterr().out.startswith(f"bleu {bleu_chrf(hypotheses, TARGETS)['bleu']:.2f}, chrf ")


def test_a_gpt_checkpoint_is_one_clear_line_and_no_output(tmp_path, capsys):
    gpt = tiny_checkpoint(tmp_path / "gpt", family="gpt")
    source, out = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("the cat\n", encoding="utf-8")
    assert main(["translate", str(gpt), "--input", str(source), "--output", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "lmforge translate needs an encoder-decoder (t5 family) checkpoint, not a gpt one" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--top-p", "2"], "--top-p must be in (0, 1]"),
        (["--num-beams", "0"], "--num-beams must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        ([], "give --text TEXT (repeatable), or --input FILE with --output FILE"),
    ],
)
def test_bad_flags_fail_before_the_model_loads(tmp_path, capsys, flags, message):
    text = ["--text", "a dog"] if flags else []
    assert main(["summarize", str(tmp_path / "missing"), *text, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_nothing_to_translate_is_one_line_and_writes_nothing(t5_checkpoint, tmp_path, capsys):
    """An empty --text, or an input file that is empty or blank: exit 2, one line, no output file. (A blank line
    among others keeps its place as a blank output line, tested above.)"""
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    runs = [
        (["--text", ""], "--text is empty"),
        (["--input", str(tmp_path / "empty.txt"), "--output", str(tmp_path / "o1.txt")], "empty.txt holds no text"),
        (["--input", str(tmp_path / "blank.txt"), "--output", str(tmp_path / "o2.txt")], "blank.txt holds no text"),
    ]
    for flags, message in runs:
        assert main(["translate", str(t5_checkpoint), *flags, "--no-progress"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o1.txt").exists() and not (tmp_path / "o2.txt").exists()
