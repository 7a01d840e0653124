import json
import random

import pytest
from helpers import FAST, PEOPLE, PLACES, WORDS, jsonl_splits, write_jsonl

from lmforge.checkpoint import load_finetuned
from lmforge.cli.main import main
from lmforge.config import FinetuneConfig
from lmforge.inference.evaluate import evaluate_checkpoint
from lmforge.inference.predict import predict_file, predict_texts
from lmforge.models.heads import SpanExtractor
from lmforge.recipes.finetune import finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def qa_records(n, seed=0):
    """Filler words and "was NAME" somewhere: the answer is the name after "was". Contexts run past one 32-token
    window, so most examples have windows with and without the answer."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = rng.choices([w for w in WORDS[6:] if w != "was"], k=rng.randint(6, 30))
        at = rng.randint(0, len(words)) + 1
        words[at - 1 : at - 1] = ["was", rng.choice(PEOPLE + PLACES)]
        start = len(" ".join(words[:at])) + 1
        records.append({
            "id": f"q{seed}-{i}", "question": "who was it", "context": " ".join(words),
            "answers": {"text": [words[at]], "answer_start": [start]},
        })  # fmt: skip
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return jsonl_splits(tmp_path_factory.mktemp("qa"), qa_records)


@pytest.fixture(scope="module")
def trained(data):
    ft = FinetuneConfig(max_steps=80, eval_every=40, **FAST)
    return finetune(data / "bert", data / "train.jsonl", data / "dev.jsonl", data / "run", "qa", None, 32, None, ft, 8)


def test_qa_learns_and_round_trips(data, trained):
    assert trained.report["exact_match"] >= 0.9  # chance: one of ~20 words
    model, _, task = load_finetuned(data / "run")
    assert isinstance(model, SpanExtractor) and (task.max_seq_len, task.doc_stride) == (32, 8)
    report, written = evaluate_checkpoint(data / "run", data / "dev.jsonl", data / "rep")
    assert report["exact_match"] == pytest.approx(trained.report["exact_match"])
    assert report["f1"] == pytest.approx(trained.report["f1"])
    assert {p.name for p in written} == {"report.json", "report.md"}
    assert predict_file(data / "run", data / "dev.jsonl", data / "pred.jsonl") == 60
    for line, gold in zip((data / "pred.jsonl").read_text().splitlines(), qa_records(60, 1), strict=True):
        pred = json.loads(line)
        assert pred["id"] == gold["id"] and gold["context"][pred["start"] : pred["end"]] == pred["answer"]
        assert 0 < pred["score"] <= 1
    context = "the film the plot very acting was alice the acting very"
    (who,) = predict_texts(data / "run", ["who was it"], context)
    assert who["answer"] == "alice" and context[who["start"] : who["end"]] == "alice"


def test_cli_finetune_evaluate_predict(data, trained, tmp_path, capsys):
    argv = ["finetune", "--task", "qa", "--model", str(data / "bert"), "--train", str(data / "train.jsonl")]
    flags = ["--max-steps", "1", "--max-seq-len", "32", "--doc-stride", "4", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "cli"), *flags]) == 0
    assert main(["evaluate", str(data / "run"), "--data", str(data / "dev.jsonl"), "--out", str(tmp_path / "e")]) == 0
    assert "exact_match" in capsys.readouterr().out
    assert main(["predict", str(data / "run"), "--text", "who was it", "--context", "the film was bob"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == "bob"
    assert main(["predict", str(data / "run"), "--text", "who"]) == 2
    assert "give the context" in capsys.readouterr().err


def test_bad_input_is_one_line_exit_2_nothing_written(data, tmp_path, capsys):
    bad = {"id": "x", "question": "who", "context": "bob in rome", "answers": {"text": ["bob"], "answer_start": [3]}}
    train = write_jsonl(tmp_path / "train.jsonl", [*qa_records(2), bad])
    argv = ["finetune", "--task", "qa", "--model", str(data / "bert"), "--train", str(train)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl, line 3: answer 'bob' is not at answer_start 3 of its context" in err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "out").exists()
    assert main(["evaluate", str(data / "run"), "--data", str(train), "--out", str(tmp_path / "rep")]) == 2
    assert "line 3" in capsys.readouterr().err and not (tmp_path / "rep").exists()
    qas = [{**bad, "answers": [{"text": "rome", "answer_start": 0}]}]
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"data": [{"paragraphs": [{"context": "bob in rome", "qas": qas}]}]}))
    assert main(["predict", str(data / "run"), "--input", str(dev), "--output", str(tmp_path / "p.jsonl")]) == 0
    assert main(["evaluate", str(data / "run"), "--data", str(dev), "--out", str(tmp_path / "rep")]) == 2
    assert "dev.json, question 'x': answer 'rome' is not at answer_start 0" in capsys.readouterr().err
