import json
import os
import signal
import threading
import time

import pytest
import torch
from helpers import FAST, ner_sentences, sentiment_csvs, tiny_checkpoint

from lmforge.checkpoint import load_finetuned
from lmforge.checkpoint.loader import load
from lmforge.cli.main import main
from lmforge.config import FinetuneConfig
from lmforge.data.sampler import class_weights
from lmforge.inference.evaluate import evaluate_checkpoint
from lmforge.inference.predict import predict_file, predict_texts
from lmforge.models.heads import SequenceClassifier
from lmforge.recipes.finetune import finetune
from lmforge.training.optim import linear_lr, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    sentiment_csvs(d, 240, 60)

    def conll(rows):
        return "".join("".join(f"{w} {t}\n" for w, t in zip(*r, strict=True)) + "\n" for r in rows)

    (d / "train.conll").write_text(conll(ner_sentences(240)))
    (d / "dev.conll").write_text(conll(ner_sentences(60, 1)))
    tiny_checkpoint(d / "bert", "bert")
    tiny_checkpoint(d / "gpt", "gpt")
    tiny_checkpoint(d / "xlnet", "xlnet")
    return d


@pytest.mark.parametrize("family", ["bert", "gpt", "xlnet"])
def test_classifier_learns_keeps_best_and_round_trips(data, tmp_path, family):
    result = finetune(
        data / family, data / "train.csv", data / "dev.csv", tmp_path / "run", ft=FinetuneConfig(epochs=6, **FAST)
    )
    assert result.report["accuracy"] >= 0.9  # chance is 0.5
    model, tokenizer, task = load_finetuned(tmp_path / "run")
    assert isinstance(model, SequenceClassifier) and task.labels == ["neg", "pos"]
    assert task.pooling == ("cls" if family == "bert" else "last")
    report, written = evaluate_checkpoint(tmp_path / "run", data / "dev.csv")
    assert report["accuracy"] == pytest.approx(result.report["accuracy"])
    assert {p.name for p in written} == {"report.json", "report.md", "confusion.png"}
    assert json.loads((tmp_path / "run" / "eval" / "report.json").read_text())["step"] == result.step
    n = predict_file(tmp_path / "run", data / "dev.csv", tmp_path / "pred.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert n == len(lines) == 60
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-4
    (good,) = predict_texts(tmp_path / "run", ["the film was great"])
    assert good["label"] == "pos" and good["probabilities"]["pos"] > 0.5


XLNET_NER_LR = {"lr": 1e-2}  # an untrained 32-wide XLNet learns the tags in 6 epochs at this rate (f1 0.52 at 3e-3)


@pytest.mark.parametrize("family", ["bert", "xlnet"])
def test_ner_learns_and_maps_tags_back_to_words(data, tmp_path, family):
    result = finetune(
        data / family,
        data / "train.conll",
        data / "dev.conll",
        tmp_path / "ner",
        "ner",
        ft=FinetuneConfig(epochs=6, **(FAST | XLNET_NER_LR if family == "xlnet" else FAST)),
    )
    assert result.report["f1"] >= 0.8
    (pred,) = predict_texts(tmp_path / "ner", ["bob saw paris city"])
    assert pred["words"] == ["bob", "saw", "paris", "city"] and len(pred["tags"]) == 4
    report, _ = evaluate_checkpoint(tmp_path / "ner", data / "dev.conll", tmp_path / "rep")
    assert report["f1"] == pytest.approx(result.report["f1"])


def test_a_fine_tuned_model_is_a_backbone_for_another_task(data, tmp_path):
    first = finetune(data / "bert", data / "train.csv", data / "dev.csv", tmp_path / "sst", ft=FinetuneConfig(**FAST))
    classifier, _, _ = load_finetuned(first.checkpoint)
    loaded = load(tmp_path / "sst")
    backbone, tokenizer, pooler = loaded.model.backbone, loaded.tokenizer, loaded.model.pooler
    pooler = pooler and pooler.state_dict()
    assert loaded.config.family == "bert" and tokenizer.vocab_size == classifier.backbone.cfg.vocab_size
    for (name, ours), (_, theirs) in zip(
        backbone.state_dict().items(), classifier.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    expected = classifier.pooler.state_dict() if classifier.pooler is not None else None
    assert (pooler is None) == (expected is None)
    for key in expected or {}:
        assert torch.equal(pooler[key], expected[key]), key
    ner = finetune(
        tmp_path / "sst", data / "train.conll", data / "dev.conll", tmp_path / "ner", "ner", ft=FinetuneConfig(**FAST)
    )
    model, _, task = load_finetuned(ner.checkpoint)
    assert task.task == "ner" and isinstance(model.backbone, type(classifier.backbone))


def test_patience_stops_early(data, tmp_path):
    cfg = FinetuneConfig(epochs=50, eval_every=2, patience=2, **{**FAST, "lr": 1e-9})
    result = finetune(data / "bert", data / "train.csv", data / "dev.csv", tmp_path / "run", ft=cfg)
    assert result.steps == 6 and result.step == 2  # evaluations at 2, 4, 6; the first stays the best


def test_sigterm_evaluates_the_current_step_keeps_the_best_and_writes_the_report(data, tmp_path):
    out = tmp_path / "run"

    def interrupt_after_first_evaluation():
        deadline = time.monotonic() + 120
        while not (out / "latest").is_file() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=interrupt_after_first_evaluation)
    sender.start()
    cfg = FinetuneConfig(epochs=1000, eval_every=3, **FAST)
    result = finetune(data / "bert", data / "train.csv", data / "dev.csv", out, ft=cfg)
    sender.join()
    assert 3 <= result.steps < 1000 * 15
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in records if "eval_accuracy" in r]
    assert evaluated[-1] == result.steps  # the step it stopped at was evaluated, wherever it fell
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["step"] == result.step and (out / f"step-{result.step:06d}").is_dir()


def test_linear_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = get_linear_schedule_with_warmup(opt, 3, 10)
    for step in range(10):
        assert linear_lr(step, 10, 3, 0.1) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


def test_layer_lr_decay_and_weight_decay_groups(data):
    from lmforge.checkpoint import load_model

    bert = load_model(data / "bert" / "step-000001")[0]  # 2 layers
    model = SequenceClassifier(bert, 2)
    scale = {id(p): g["lr_scale"] for g in param_groups(model, 0.01, 0.5) for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in param_groups(model, 0.01, 0.5) for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["classifier.weight"])] == 1.0
    assert scale[id(named["backbone.encoder.blocks.1.attn.qkv.weight"])] == 0.5
    assert scale[id(named["backbone.encoder.blocks.0.attn.qkv.weight"])] == 0.25
    assert scale[id(named["backbone.embeddings.word.weight"])] == 0.125
    assert decay[id(named["classifier.weight"])] == 0.01 and decay[id(named["classifier.bias"])] == 0.0


def test_class_weights_balance_counts():
    feats = [{"label": 0}] * 3 + [{"label": 1}]
    torch.testing.assert_close(class_weights(feats, 2), torch.tensor([4 / 6, 4 / 2]))


def run_cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("task", "train", "eval_text", "message"),
    [
        (
            "classification",
            None,
            "text,label\ngood,pos\nmeh,neutral\n",
            "dev.csv, line 3: label 'neutral' is not one of",
        ),
        ("classification", None, "", "dev.csv is empty"),
        ("classification", None, "review,label\ngood,pos\n", "dev.csv: no text column 'text'"),
        ("ner", "a B-PER\nb O\n\nc O O\n", None, "train.conll, line 4: 3 columns where line 1 has 2"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(data, tmp_path, capsys, task, train, eval_text, message):
    train_path = data / ("train.conll" if task == "ner" else "train.csv")
    if train is not None:
        train_path = tmp_path / "train.conll"
        train_path.write_text(train)
    argv = [
        "finetune",
        "--task",
        task,
        "--model",
        str(data / "bert"),
        "--train",
        str(train_path),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--device",
        "cpu",
    ]
    if eval_text is not None:
        (tmp_path / "dev.csv").write_text(eval_text)
        argv += ["--eval", str(tmp_path / "dev.csv")]
    code, err = run_cli(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_finetune_evaluate_predict(data, tmp_path, capsys):
    out = tmp_path / "cli"
    common = ["--model", str(data / "bert"), "--train", str(data / "train.csv"), "--eval", str(data / "dev.csv")]
    flags = ["--epochs", "1", "--batch-size", "32", "--no-progress", "--device", "cpu", "--seed", "1"]
    assert main(["finetune", *common, "--out", str(out), *flags]) == 0
    assert "saved" in capsys.readouterr().out
    assert main(["finetune", *common, "--out", str(out), *flags]) == 2  # never overwrites a run
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--data", str(data / "dev.csv")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["predict", str(out), "--text", "bad plot", "--text", "great film"]) == 0
    assert [json.loads(x)["text"] for x in capsys.readouterr().out.splitlines()] == ["bad plot", "great film"]
    assert main(["predict", str(out)]) == 2
    assert main(["evaluate", str(data / "bert"), "--data", str(data / "dev.csv")]) == 2
    assert "is not fine-tuned" in capsys.readouterr().err


def test_pretrain_then_finetune_end_to_end(documents, data, tmp_path, capsys):
    """The case study's second path: a BERT pretrained with lmforge pretrain, fine-tuned, evaluated, predicted."""
    tiny = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_seq_len=32", "data.vocab_size=300"]
    sets = [x for o in [*tiny, "train.batch_size=8", "train.progress=false"] for x in ("--set", o)]
    argv = ["pretrain", "--config", "bert-small", "--data", str(documents), "--out", str(tmp_path / "bert")]
    assert main([*argv, "--max-steps", "3", "--device", "cpu", *sets]) == 0
    out = str(tmp_path / "sst")
    flags = ["--epochs", "1", "--no-progress", "--device", "cpu"]
    finetune_argv = ["finetune", "--model", str(tmp_path / "bert"), "--train", str(data / "train.csv")]
    assert main([*finetune_argv, "--eval", str(data / "dev.csv"), "--out", out, *flags]) == 0
    assert main(["evaluate", out, "--data", str(data / "dev.csv")]) == 0
    assert main(["predict", out, "--text", "good film"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["label"] in ("neg", "pos")
