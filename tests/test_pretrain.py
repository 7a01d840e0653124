"""Encoder pretraining through the one training loop: it learns, logs its metrics, resumes exactly, and the
checkpoints load back as the right model."""

import collections
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoint import load_model
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.models import Bert
from lmforge.objectives import OBJECTIVES
from lmforge.recipes.pretrain import train


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_bert_learns_mlm_and_nsp_well_above_chance(encoder_overrides, tmp_path):
    overrides = [*encoder_overrides, "train.max_steps=150", "train.eval_every=50", "train.lr=5e-3", "train.min_lr=5e-4"]
    cfg = load_config("bert-small", overrides)
    result = train(cfg)
    evals = [r for r in records(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [50, 100, 150] and evals[-1]["val_ppl"] < evals[0]["val_ppl"]
    # chance: NSP 0.5; MLM the share of the most common masked token ("the") in the same validation batches
    task = OBJECTIVES["bert"]
    counts = collections.Counter()
    for batch in task.eval_batches(cfg, task.data(cfg, tmp_path / "run" / "data")):
        counts.update(batch["labels"][batch["labels"] != -100].tolist())
    majority = counts.most_common(1)[0][1] / sum(counts.values())
    final = result.val_metrics
    assert final["val_nsp_acc"] > 0.75, final
    assert final["val_mlm_acc"] > majority + 0.1, (final, majority)
    train_records = [r for r in records(tmp_path / "run") if "loss" in r]
    assert {"mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc"} <= set(train_records[-1])
    model, tokenizer, run_cfg = load_model(result.checkpoint)
    assert isinstance(model, Bert) and run_cfg.family == "bert" and tokenizer.kind == "wordpiece"


def test_albert_and_roberta_run_and_load_back(encoder_overrides, tmp_path):
    albert = train(load_config("albert-small", [*encoder_overrides, "model.embedding_size=16", "train.max_steps=3"]))
    last = [r for r in records(tmp_path / "run") if "loss" in r][-1]
    assert "sop_acc" in last and "nsp_acc" not in last and "val_sop_acc" in albert.val_metrics
    weights = load_file(albert.checkpoint / "model.safetensors")
    assert not any(k.startswith("encoder.blocks.1.") for k in weights)  # one shared layer is stored once
    model, _, cfg = load_model(albert.checkpoint)
    assert cfg.model.share_layers and len(model.encoder.blocks) == 1 and model.embeddings.project is not None

    roberta_out = tmp_path / "roberta"
    roberta = train(load_config("roberta-small", [*encoder_overrides, f"train.out={roberta_out}", "train.max_steps=3"]))
    assert set(roberta.val_metrics) == {"val_loss", "val_mlm_loss", "val_mlm_acc", "val_ppl"}
    model, tokenizer, _ = load_model(roberta.checkpoint)
    assert model.sentence_head is None and tokenizer.kind == "bpe" and tokenizer.mask_id == 4


def test_encoder_configs_need_an_encoder_tokenizer_and_documents(encoder_overrides, tmp_path, corpus):
    with pytest.raises(LmforgeError, match="char has no \\[CLS\\]"):
        load_config("bert-small", ["data.tokenizer=char"])
    one_document = [*encoder_overrides, f"data.path={corpus}", "train.max_steps=2"]  # no blank lines: one document
    with pytest.raises(LmforgeError, match="1 document"):
        train(load_config("bert-small", one_document))
    roberta = train(load_config("roberta-small", [*one_document, "data.val_fraction=0"]))  # MLM alone needs none
    assert roberta.val_loss is None and roberta.step == 2


def test_resume_on_other_documents_keeps_the_checkpoints_tokenizer(encoder_overrides, tmp_path, capsys):
    """The new documents are tokenized with the checkpoint's WordPiece, not with one trained on them."""
    from conftest import topic_documents

    other = tmp_path / "other.txt"
    other.write_text(topic_documents(seed=1).replace("a", "q").replace("o", "x"), encoding="utf-8")
    first = train(load_config("bert-small", [*encoder_overrides, "train.max_steps=2"]))
    capsys.readouterr()
    again = train(load_config("bert-small", [*encoder_overrides, f"data.path={other}", "train.max_steps=4"]), True)
    assert "with its tokenizer" in capsys.readouterr().err
    assert (again.checkpoint / "tokenizer.json").read_text() == (first.checkpoint / "tokenizer.json").read_text()


TINY_T5 = [
    "model.n_layer=2", "model.n_decoder_layer=2", "model.n_head=2", "model.d_model=64", "model.d_kv=32",
    "model.d_ff=128", "model.max_seq_len=32", "data.vocab_size=300", "train.batch_size=16", "train.warmup_steps=5",
    "train.eval_steps=4", "train.log_every=1", "train.progress=false", "train.lr=3e-3", "train.min_lr=3e-4",
]  # fmt: skip


def test_tiny_t5_learns_span_corruption(documents, tmp_path, one_thread):
    overrides = [*TINY_T5, f"data.path={documents}", f"train.out={tmp_path / 'run'}", "model.dropout=0.0",
                 "train.max_steps=40", "train.eval_every=10"]  # fmt: skip
    result = train(load_config("t5-small", overrides))
    evals = [r for r in records(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, evals  # measured: 3.81 -> 3.17
    assert set(result.val_metrics) == {"val_loss", "val_token_acc", "val_nll", "val_ppl"}
    model, tokenizer, cfg = load_model(result.checkpoint)
    assert model.family == "t5" and tokenizer.backend.token_to_id("<extra_id_0>") == tokenizer.vocab_size - 1
    assert (cfg.model.pad_id, cfg.model.eos_id) == (tokenizer.pad_id, tokenizer.sep_id)


def test_t5_resume_is_exact(documents, tmp_path, one_thread):
    """Stopped at its step-4 checkpoint and resumed, a T5 run ends bitwise equal to the straight one (dropout on)."""
    out = tmp_path / "run"
    overrides = [*TINY_T5, f"data.path={documents}", f"train.out={out}", "model.dropout=0.1", "train.max_steps=8",
                 "train.save_every=4", "train.keep_last=5", "train.eval_every=0"]  # fmt: skip
    straight = load_file(train(load_config("t5-small", overrides)).checkpoint / "model.safetensors")
    shutil.rmtree(out / "step-000008")
    (out / "latest").write_text("step-000004\n")
    resumed = load_file(train(load_config("t5-small", overrides), resume=True).checkpoint / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


TINY_XLNET = [
    "model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.d_ff=128", "model.max_seq_len=32",
    "data.vocab_size=300", "data.val_fraction=0.1", "train.batch_size=16", "train.warmup_steps=10", "train.lr=3e-3",
    "train.log_every=1", "train.eval_steps=8", "train.progress=false",
]  # fmt: skip


def unigram_loss(data) -> float:
    """The validation cross-entropy of the training split's token frequencies: what a model without context gets."""
    import numpy as np

    counts = np.bincount(data.train.tokens, minlength=data.tokenizer.vocab_size) + 1.0
    return float(-np.log(counts / counts.sum())[data.val.tokens].mean())


def test_tiny_xlnet_learns_permutation_lm_well_below_the_unigram_baseline(documents, tmp_path, one_thread):
    from lmforge.data import load_documents

    overrides = [*TINY_XLNET, f"data.path={documents}", f"train.out={tmp_path / 'run'}", "model.dropout=0.0",
                 "train.max_steps=300", "train.eval_every=100"]  # fmt: skip
    result = train(load_config("xlnet-small", overrides))
    evals = [r for r in records(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evals] == [100, 200, 300]
    baseline = unigram_loss(load_documents(result.data))  # measured: 3.62 -> val loss 1.18 at step 300
    assert evals[-1]["val_loss"] < baseline - 1.0, (baseline, evals)
    assert set(result.val_metrics) == {"val_loss", "val_plm_loss", "val_plm_acc", "val_ppl"}
    assert result.val_metrics["val_plm_acc"] > 0.4
    model, tokenizer, cfg = load_model(result.checkpoint)
    assert model.family == "xlnet" and cfg.model.vocab_size == tokenizer.vocab_size
    assert (tokenizer.cls_id, tokenizer.sep_id) != (None, None)  # what fine-tuning's A <sep> <cls> needs


@pytest.mark.parametrize("span", [False, True])
def test_xlnet_resume_is_exact(documents, tmp_path, one_thread, span):
    """Stopped at its step-3 checkpoint and resumed, an XLNet run ends bitwise equal to the straight one (dropout and
    the factorization orders drawn anew at every step)."""
    out = tmp_path / "run"
    overrides = [*TINY_XLNET, f"data.path={documents}", f"train.out={out}", "model.dropout=0.1", "train.max_steps=6",
                 "train.save_every=3", "train.keep_last=5", "train.eval_every=0",
                 f"model.span_prediction={span}"]  # fmt: skip
    straight = load_file(train(load_config("xlnet-small", overrides)).checkpoint / "model.safetensors")
    shutil.rmtree(out / "step-000006")
    (out / "latest").write_text("step-000003\n")
    resumed = load_file(train(load_config("xlnet-small", overrides), resume=True).checkpoint / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_xlnet_needs_a_tokenizer_with_sep_and_cls(documents, tmp_path):
    overrides = [*TINY_XLNET, f"data.path={documents}", f"train.out={tmp_path / 'run'}", "data.tokenizer=char"]
    with pytest.raises(LmforgeError, match="has no <cls> or <sep>"):
        train(load_config("xlnet-small", overrides))


def test_lmforge_pretrain_accepts_an_xlnet_config(documents, tmp_path, capsys, one_thread):
    from lmforge.cli.main import main

    args = ["pretrain", "--config", "xlnet-small", "--data", str(documents), "--out", str(tmp_path / "run"),
            "--max-steps", "2", "--no-progress"]  # fmt: skip
    for override in [*TINY_XLNET, "train.eval_steps=1"]:
        args += ["--set", override]
    assert main(args) in (0, None)
    out = capsys.readouterr().out
    assert "saved" in out and "plm_acc" in out
