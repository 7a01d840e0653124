import json
import random

import pytest
import torch
from helpers import FAST, PEOPLE, PLACES, WORDS, jsonl_splits, write_jsonl

from lmforge.checkpoint import load_checkpoint, load_finetuned
from lmforge.cli.main import main
from lmforge.config import FinetuneConfig
from lmforge.inference.evaluate import evaluate_checkpoint
from lmforge.inference.predict import predict_file, predict_texts
from lmforge.models.heads import EntityPairClassifier
from lmforge.recipes.finetune import finetune
from lmforge.tasks.metrics import relation_metrics
from lmforge.tasks.relation import MARKERS

pytestmark = pytest.mark.usefixtures("one_thread")


def relation_records(n, seed=0):
    """Filler words with two or more names; the label is the kinds of the marked head and tail (per_loc, ...), so
    the same sentence has different labels for different marked pairs."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        words = rng.choices(WORDS[6:], k=rng.randint(3, 6))
        for _ in range(2):
            words.insert(rng.randint(0, len(words)), rng.choice(PEOPLE + PLACES))
        named = [i for i, w in enumerate(words) if w in PEOPLE + PLACES]
        head, tail = rng.sample(named, 2)
        starts = [len(" ".join(words[:i])) + (1 if i else 0) for i in range(len(words))]
        kind = {**dict.fromkeys(PEOPLE, "per"), **dict.fromkeys(PLACES, "loc")}
        records.append({
            "text": " ".join(words),
            "head": {"start": starts[head], "end": starts[head] + len(words[head])},
            "tail": {"start": starts[tail], "end": starts[tail] + len(words[tail])},
            "label": f"{kind[words[head]]}_{kind[words[tail]]}",
        })  # fmt: skip
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return jsonl_splits(tmp_path_factory.mktemp("relation"), relation_records, ("bert", "gpt"))


@pytest.fixture(scope="module")
def trained(data):
    result = finetune(data / "bert", data / "train.jsonl", data / "dev.jsonl", data / "run", "relation",
                      ft=FinetuneConfig(epochs=10, **FAST))  # fmt: skip
    return result


def test_relation_learns_and_round_trips_with_its_markers(data, trained):
    assert trained.report["accuracy"] >= 0.6  # chance is 0.25
    ckpt = load_checkpoint(data / "run")
    assert all(ckpt.tokenizer.backend.token_to_id(m) is not None for m in MARKERS)
    assert (
        ckpt.cfg.model.vocab_size
        == ckpt.tokenizer.vocab_size
        == ckpt.weights["backbone.embeddings.word.weight"].size(0)
    )
    model, _, task = load_finetuned(data / "run")
    assert isinstance(model, EntityPairClassifier) and task.labels == ["loc_loc", "loc_per", "per_loc", "per_per"]
    report, _ = evaluate_checkpoint(data / "run", data / "dev.jsonl", data / "rep")
    assert report["accuracy"] == pytest.approx(trained.report["accuracy"]) and "macro_f1" in report
    assert predict_file(data / "run", data / "dev.jsonl", data / "pred.jsonl") == 60
    first = json.loads((data / "pred.jsonl").read_text().splitlines()[0])
    gold = relation_records(60, 1)[0]
    assert first["text"] == gold["text"] and first["head"] == [gold["head"]["start"], gold["head"]["end"]]
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-4
    (pred,) = predict_texts(data / "run", ["the [E1]alice[/E1] film was [E2]paris[/E2]"])
    assert pred["text"] == "the alice film was paris" and pred["head"] == [4, 9] and pred["tail"] == [19, 24]


def test_a_relation_model_fine_tuned_again_keeps_its_trained_markers(data, trained, tmp_path):
    before = load_checkpoint(data / "run").weights["backbone.embeddings.word.weight"]
    again = finetune(data / "run", data / "train.jsonl", None, tmp_path / "again", "relation",
                     ft=FinetuneConfig(max_steps=1, **{**FAST, "lr": 1e-12}))  # fmt: skip
    after = load_checkpoint(again.checkpoint).weights["backbone.embeddings.word.weight"]
    assert after.shape == before.shape  # no rows added for markers the vocabulary already has
    ids = [load_checkpoint(data / "run").tokenizer.backend.token_to_id(m) for m in MARKERS]
    torch.testing.assert_close(after[ids], before[ids], atol=1e-8, rtol=0)  # trained rows, not reset to the mean
    assert (before[ids] - before[:-4].mean(0)).abs().max() > 1e-3


def test_gpt_backbone_trains_and_reloads(data, tmp_path):
    ft = FinetuneConfig(max_steps=2, **FAST)
    finetune(data / "gpt", data / "train.jsonl", None, tmp_path / "gpt", "relation", ft=ft)
    (pred,) = predict_texts(tmp_path / "gpt", ["[E1]bob[/E1] saw [E2]rome[/E2]"])
    assert pred["label"] in {"loc_loc", "loc_per", "per_loc", "per_per"}


def test_micro_f1_leaves_out_no_relation():
    labels = ["founded", "no_relation", "born_in"]
    gold = [0, 1, 1, 2, 2]
    pred = [0, 0, 1, 2, 1]  # 2 right relations; 3 predicted relations; 3 true relations
    report = relation_metrics(gold, pred, labels)
    assert report["micro_f1"] == pytest.approx(2 / 3) and report["accuracy"] == pytest.approx(3 / 5)
    assert "micro_f1" not in relation_metrics([0, 1], [0, 1], ["a", "b"])


def test_cli_finetune_evaluate_predict(data, trained, tmp_path, capsys):
    flags = ["--max-steps", "1", "--no-progress", "--device", "cpu"]
    argv = ["finetune", "--task", "relation", "--model", str(data / "bert"), "--train", str(data / "train.jsonl")]
    assert main([*argv, "--out", str(tmp_path / "cli"), *flags]) == 0
    assert main(["evaluate", str(data / "run"), "--data", str(data / "dev.jsonl"), "--out", str(tmp_path / "e")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["predict", str(data / "run"), "--text", "[E1]carol[/E1] in [E2]oslo[/E2]"]) == 0
    assert json.loads(capsys.readouterr().out)["head"] == [0, 5]
    assert main(["predict", str(data / "run"), "--text", "carol in oslo"]) == 2
    assert "--text 1: mark both entities" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "bob in rome", "head": [0, 3], "tail": [2, 6], "label": "x"}, "line 2: the entities overlap"),
        ({"text": "bob in rome", "head": [0, 3], "tail": [7, 99], "label": "x"}, 'line 2: entity "tail" must be'),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_nothing_written(data, tmp_path, capsys, record, message):
    train = write_jsonl(tmp_path / "train.jsonl", [relation_records(1)[0], record])
    argv = ["finetune", "--task", "relation", "--model", str(data / "bert"), "--train", str(train)]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
