"""Continued (domain-adaptive) pretraining: --init starts from a pretrained model's weights, tokenizer and
architecture, evaluates it on the domain's held-out text first (step 0), adds --add-tokens with embeddings at the
mean of their old pieces, resumes exactly, and refuses what cannot continue."""

import json

import pytest
import torch
from helpers import tiny_checkpoint

from lmforge.checkpoint.loader import load
from lmforge.cli.main import main

SMALL = ["--set", "train.batch_size=4", "--set", "train.seq_len=32", "--set", "train.eval_steps=2",
         "--set", "train.warmup_steps=0", "--no-progress"]  # fmt: skip


def evals(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"val_' in x]


def test_minilm_continues_masked_lm_from_its_own_weights_and_tokenizer(tmp_path, documents):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("sat-on-the-mat\nxylophonist\nthe\n", encoding="utf-8")  # "the" is known: not added
    out = tmp_path / "adapted"
    argv = ["pretrain", "--config", "bert-small", "--init", "all-MiniLM-L6-v2", "--add-tokens", str(tokens),
            "--data", str(documents), "--out", str(out), "--max-steps", "1", "--set", "train.lr=1e-30",
            *SMALL]  # fmt: skip
    assert main(argv) == 0
    original, adapted = load("all-MiniLM-L6-v2"), load(out)
    assert adapted.config.model.d_model == 384 and adapted.config.model.mlm_head  # MiniLM's shape, with an MLM head
    assert adapted.tokenizer.vocab_size == original.tokenizer.vocab_size + 2
    table, old = adapted.model.embeddings.word.weight, original.model.embeddings.word.weight
    for token in ("sat-on-the-mat", "xylophonist"):
        pieces = original.tokenizer.encode(token)
        assert len(pieces) > 1 and adapted.tokenizer.encode(token) == [adapted.tokenizer.backend.token_to_id(token)]
        torch.testing.assert_close(table[adapted.tokenizer.backend.token_to_id(token)], old[pieces].mean(0))
    weights = original.model.state_dict()
    for name, value in adapted.model.state_dict().items():
        if name in weights and name != "embeddings.word.weight":
            torch.testing.assert_close(value, weights[name], msg=name)  # lr ~0: the pretrained weights, kept
    assert [r["step"] for r in evals(out)] == [0, 1]  # before (step 0) and after


def test_adaptation_lowers_the_masked_token_perplexity_and_resumes_exactly(tmp_path, documents):
    # warmup over the whole run: the lr does not depend on max_steps, so 3 + 3 steps equal 6
    argv = ["pretrain", "--config", "bert-small", "--init", "all-MiniLM-L6-v2", "--data", str(documents), *SMALL,
            "--set", "train.lr=1e-3", "--set", "train.eval_every=0", "--set", "train.warmup_steps=10"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "whole"), "--max-steps", "6"]) == 0
    before, after = evals(tmp_path / "whole")
    assert after["val_ppl"] < before["val_ppl"], (before, after)
    assert main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "3"]) == 0
    assert main([*argv, "--out", str(tmp_path / "split"), "--max-steps", "6", "--resume"]) == 0
    whole, split = load(tmp_path / "whole").model.state_dict(), load(tmp_path / "split").model.state_dict()
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_a_gpt_continues_causal_lm(tmp_path, documents):
    tiny_checkpoint(tmp_path / "gpt", family="gpt")
    out = tmp_path / "more"
    argv = ["train", "--config", "char-small", "--init", str(tmp_path / "gpt"), "--data", str(documents), "--out",
            str(out), "--max-steps", "2", *SMALL]  # fmt: skip
    assert main(argv) == 0
    assert load(out).tokenizer.kind == "bpe" and load(out).config.model.d_model == 32  # the init's, not char-small's


@pytest.mark.parametrize(
    ("config", "init", "extra", "message"),
    [
        ("char-small", "bert", [], "holds a bert model but the config is a gpt one"),
        ("bert-small", "finetuned", [], "is fine-tuned for classification"),
        ("bert-small", None, ["--add-tokens", "tokens.txt"], "give --init too"),
        ("bert-small", "bert", ["--add-tokens", "missing.txt"], "missing.txt not found"),
    ],
)
def test_what_cannot_continue_is_one_line(tmp_path, documents, capsys, config, init, extra, message):
    tiny_checkpoint(tmp_path / "bert")
    (tmp_path / "tokens.txt").write_text("x\n", encoding="utf-8")
    if init == "finetuned":
        from helpers import sentiment_csvs

        sentiment_csvs(tmp_path, 8, 4)
        assert main(["finetune", "--model", str(tmp_path / "bert"), "--train", str(tmp_path / "train.csv"),
                     "--out", str(tmp_path / "finetuned"), "--max-steps", "1", "--no-progress"]) == 0  # fmt: skip
        capsys.readouterr()
    verb = "train" if config == "char-small" else "pretrain"
    extra = [str(tmp_path / x) if x.endswith(".txt") else x for x in extra]
    argv = [verb, "--config", config, "--data", str(documents), "--out", str(tmp_path / "out"), *SMALL, *extra]
    if init is not None:
        argv += ["--init", str(tmp_path / init)]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not list((tmp_path / "out").glob("step-*")) if (tmp_path / "out").exists() else True
