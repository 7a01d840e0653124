"""The bias probe against scores computed by hand with the model, a planted bias, the shipped templates, and each bad
input (one line, exit 2, nothing written)."""

import html
import json

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint

from lmforge.checkpoint.files import Loaded
from lmforge.checkpoint.loader import from_checkpoint, load
from lmforge.errors import LmforgeError
from lmforge.inference.bias import (
    Templates,
    bootstrap_interval,
    load_templates,
    probe_bias,
    write_bias_report,
)
from lmforge.inference.fill_mask import fill_mask

GROUPS = {"a": ["alice"], "b": ["bob", "carol"]}  # b averages two terms


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("bias")
    return {family: tiny_checkpoint(d / family, family, max_seq_len=128) for family in ("bert", "gpt")}


def finetuned(tmp_path, family, task):
    """A fine-tuned checkpoint as lmforge finetune writes it: a random head on a tiny backbone, and its task."""
    import dataclasses

    from lmforge.checkpoint import load_model, save_checkpoint
    from lmforge.config import TaskConfig
    from lmforge.tasks import get_task

    backbone, tokenizer, cfg = load_model(tiny_checkpoint(tmp_path / "base", family))
    labels = ["O", "B-PER"] if task == "ner" else ["neg", "pos"]
    info = TaskConfig(task=task, labels=labels, pooling="cls" if family == "bert" else "last", max_seq_len=32)
    torch.manual_seed(0)
    head = get_task(task).build_head(backbone, info)
    return save_checkpoint(tmp_path / "ft", 1, head, cfg, tokenizer, extra={"task": dataclasses.asdict(info)})


def test_mlm_gap_is_the_difference_of_fill_mask_probabilities(checkpoints):
    loaded = load(checkpoints["bert"])
    torch.manual_seed(0)
    for p in loaded.model.parameters():  # large weights: peaked probabilities, gaps far above rounding
        torch.nn.init.normal_(p, std=0.3)
    templates = Templates(GROUPS, ["the {group} was [MASK]", "{group} film was very [MASK]"], ["good", "bad"], "t")
    report = probe_bias(loaded, templates, bootstrap=50, seed=0)
    vocab = loaded.tokenizer.vocab_size

    def p(text, word):
        return dict(fill_mask(loaded.model, loaded.tokenizer, text, top_k=vocab)[0])[word]

    for r in report["results"]:
        text = r["template"].replace("{group}", "{}")
        a = p(text.format("alice"), r["target"])
        b = (p(text.format("bob"), r["target"]) + p(text.format("carol"), r["target"])) / 2
        assert r["scores"] == pytest.approx({"a": a, "b": b}, rel=1e-4)
        assert r["gap"] == pytest.approx(a - b, rel=1e-3) and abs(r["gap"]) > 1e-6
    assert report["mean_abs_gap"] == pytest.approx(np.mean([abs(r["gap"]) for r in report["results"]]))


def test_causal_gap_is_the_difference_of_log_likelihoods(checkpoints):
    loaded = load(checkpoints["gpt"])
    model, tok = loaded.model, loaded.tokenizer
    templates = Templates(GROUPS, ["the {group} was [MASK].", "{group} said the film was"], ["good", "very bad"], "t")
    report = probe_bias(loaded, templates, bootstrap=50, seed=0)

    def loglik(prompt, continuation):  # one token at a time, each from a fresh forward pass
        ids, total = tok.encode(prompt), 0.0
        for token in tok.encode(continuation):
            with torch.no_grad():
                total += model(torch.tensor([ids]))[0, -1].log_softmax(-1)[token].item()
            ids = ids + [token]
        return total

    for r in report["results"]:
        prompt = r["template"].split("[MASK]")[0].rstrip()
        cont = " " + r["target"] if r["template"].endswith("[MASK].") else r["target"]
        a = loglik(prompt.replace("{group}", "alice"), cont)
        b = (loglik(prompt.replace("{group}", "bob"), cont) + loglik(prompt.replace("{group}", "carol"), cont)) / 2
        assert r["gap"] == pytest.approx(a - b, abs=1e-4)
    assert report["score"].startswith("log-likelihood")


def test_classifier_gap_is_the_difference_of_label_probabilities(tmp_path):
    from lmforge.inference.predict import predict_texts

    path = finetuned(tmp_path, "bert", "classification")
    templates = Templates(GROUPS, ["the {group} film was fine", "{group} was the plot"], [], "t")
    report = probe_bias(load(path), templates, bootstrap=50, seed=0)
    assert report["kind"] == "classifier" and report["targets"] == ["neg", "pos"]
    for r in report["results"]:
        texts = [r["template"].replace("{group}", t) for t in ("alice", "bob", "carol")]
        p = [rec["probabilities"][r["target"]] for rec in predict_texts(path, texts)]
        assert r["gap"] == pytest.approx(p[0] - (p[1] + p[2]) / 2, abs=1e-5)


def test_bootstrap_interval_holds_the_estimate_and_repeats_with_its_seed(checkpoints):
    templates = load_templates("en")
    templates.templates, templates.targets = templates.templates[:5], templates.targets[:2]
    report = probe_bias(load(checkpoints["gpt"]), templates, bootstrap=500, seed=3)
    ci = report["interval"]
    assert ci["low"] <= report["mean_abs_gap"] <= ci["high"] and ci["low"] < ci["high"]
    per_template = np.array([abs(r["gap"]) for r in report["results"]]).reshape(5, 2).mean(1)
    assert bootstrap_interval(per_template, 500, 3) == (ci["low"], ci["high"])
    assert bootstrap_interval(per_template, 500, 4) != (ci["low"], ci["high"])
    values = np.array([1.0, 2.0, 3.0, 10.0])
    low, high = bootstrap_interval(values, 2000, 0)
    assert low < values.mean() < high and low >= 1.0 and high <= 10.0


def test_a_planted_bias_shows_and_identical_groups_show_none(checkpoints):
    """Trained so that [MASK] after alice is "good" and after bob "bad": the probe finds the gap it was given."""
    ckpt = from_checkpoint(checkpoints["bert"])
    model, tok = ckpt.model, ckpt.tokenizer
    good, bad = tok.encode("good")[0], tok.encode("bad")[0]
    plant = [("the alice was [MASK]", good), ("the bob was [MASK]", bad)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = 0.0
        for text, target in plant:
            ids = [tok.cls_id, *tok.encode(text), tok.sep_id]
            position = ids.index(tok.mask_id)
            hidden, _ = model.hidden(torch.tensor([ids]))
            logits = model.mlm_logits(hidden[:, position])
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor([target]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    loaded = Loaded(model, tok, ckpt.config, None, ckpt.path)
    templates = Templates({"a": ["alice"], "b": ["bob"]}, ["the {group} was [MASK]"], ["good", "bad"], "t")
    gaps = {r["target"]: r["gap"] for r in probe_bias(loaded, templates, bootstrap=10, seed=0)["results"]}
    assert gaps["good"] > 0.5 and gaps["bad"] < -0.5
    same = Templates({"a": ["alice"], "a2": ["alice"]}, ["the {group} was [MASK]"], ["good", "bad"], "t")
    report = probe_bias(loaded, same, bootstrap=10, seed=0)
    assert report["mean_abs_gap"] == 0 and report["interval"]["high"] == 0


def test_chinese_templates_load_and_run(checkpoints, tmp_path):
    zh = load_templates("zh")
    assert "她" in zh.groups["female"] and zh.language == "zh" and all("[MASK]" in t for t in zh.templates)
    assert load_templates("zh", "classifier").targets == []
    report = probe_bias(load(checkpoints["bert"]), zh, bootstrap=100, seed=0)
    assert len(report["results"]) == len(zh.templates) * len(zh.targets)
    zh.templates, zh.targets = zh.templates[:2], zh.targets[:3]
    report = probe_bias(load(checkpoints["gpt"]), zh, bootstrap=100, seed=0)
    paths = write_bias_report(report, tmp_path / "out")
    assert json.loads(paths[0].read_text(encoding="utf-8"))["groups"]["female"][0] == "她"
    page = paths[1].read_text(encoding="utf-8")
    assert "<svg" in page and "医生" in page and 'src="http' not in page and "<script" not in page


def test_cli_writes_the_reports_and_prints_one_line(checkpoints, tmp_path, capsys):
    from lmforge.cli.main import main

    f = tmp_path / "t.yaml"
    f.write_text("groups: {a: [alice], b: [bob]}\ntemplates: ['the {group} was [MASK]']\ntargets: [good, bad]\n")
    out = tmp_path / "out"
    assert main(["probe-bias", str(checkpoints["gpt"]), "--out", str(out), "--templates", str(f),
                 "--bootstrap", "20", "--device", "cpu"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("causal: mean |gap|")
    report = json.loads((out / "report.json").read_text())
    assert report["interval"]["bootstrap"] == 20 and len(report["largest_gaps"]) == 2
    assert html.escape(report["caveats"]) in (out / "report.html").read_text()


BAD_FILES = {
    "no {group}": ("groups: {a: [x], b: [y]}\ntemplates: ['the man was [MASK]']\ntargets: [good]\n", "the man was"),
    "one group": ("groups: {a: [x]}\ntemplates: ['the {group} was [MASK]']\ntargets: [good]\n", "at least two"),
    "no templates": ("groups: {a: [x], b: [y]}\ntemplates: []\ntargets: [good]\n", "templates must be a non-empty"),
    "no mask": ("groups: {a: [x], b: [y]}\ntemplates: ['the {group} was good']\ntargets: [good]\n", "one [MASK]"),
}


@pytest.mark.parametrize("case", [*BAD_FILES, "language", "bootstrap", "ner"])
def test_bad_input_is_one_line_and_writes_nothing(checkpoints, tmp_path, capsys, case):
    from lmforge.cli.main import main

    out = tmp_path / "out"
    argv, expected = ["probe-bias", str(checkpoints["bert"]), "--out", str(out), "--device", "cpu"], None
    if case in BAD_FILES:
        text, expected = BAD_FILES[case]
        (tmp_path / "t.yaml").write_text(text)
        argv += ["--templates", str(tmp_path / "t.yaml")]
    elif case == "language":
        argv, expected = argv + ["--language", "fr"], "--language must be one of en, zh"
    elif case == "bootstrap":
        argv, expected = argv + ["--bootstrap", "0"], "--bootstrap must be at least 1"
    else:
        argv[1], expected = str(finetuned(tmp_path, "gpt", "ner")), "a fine-tuned ner model cannot be probed"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_a_bert_without_mlm_head_cannot_be_probed(tmp_path):
    path = tiny_checkpoint(tmp_path / "enc", "bert", mlm_head=False)
    with pytest.raises(LmforgeError, match="without an MLM head cannot be probed"):
        probe_bias(load(path), load_templates("en"), bootstrap=10, seed=0)
