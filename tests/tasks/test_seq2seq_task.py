"""--task seq2seq: an encoder-decoder fine-tuned on source/target pairs through the task interface (teacher
forcing, the best checkpoint by BLEU on --eval), then used by translate, evaluate and predict."""

import json
import random

import pytest
import torch
from helpers import train_cli, write_reversal

from lmforge.checkpoint.loader import load
from lmforge.cli.main import main
from lmforge.config import TaskConfig
from lmforge.data.labelled import Columns
from lmforge.tasks import get_task


def write_pairs(path, n, seed):
    """Three to six letters and the same letters reversed, as a .tsv with source and target columns."""
    rng = random.Random(seed)
    rows = [[rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))] for _ in range(n)]
    path.write_text("source\ttarget\n" + "".join(f"{' '.join(w)}\t{' '.join(w[::-1])}\n" for w in rows), "utf-8")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny original Transformer that has seen the letters (a few steps of the reversal task)."""
    folder = tmp_path_factory.mktemp("pre")
    assert train_cli(write_reversal(folder, 500, 20), folder / "run", steps=20) == 0
    return folder / "run"


def test_fine_tuning_keeps_the_best_checkpoint_by_bleu_and_learns(tmp_path, pretrained, capsys):
    train, dev = write_pairs(tmp_path / "train.tsv", 600, 0), write_pairs(tmp_path / "dev.tsv", 24, 1)
    argv = ["finetune", "--task", "seq2seq", "--model", str(pretrained), "--train", str(train), "--eval", str(dev),
            "--out", str(tmp_path / "ft"), "--max-steps", "150", "--eval-every", "50", "--batch-size", "32",
            "--lr", "3e-3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "ft" / "eval" / "report.json").read_text())
    assert report["bleu"] > 60 and {"chrf", "rougeL", "bleu_signature"} <= set(report), report
    evals = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines() if "eval_bleu" in x]
    assert report["step"] == max(evals, key=lambda r: r["eval_bleu"])["step"]
    loaded = load(tmp_path / "ft", "cpu")
    assert loaded.task.task == "seq2seq" and loaded.model.backbone.family == "t5"
    capsys.readouterr()
    assert main(["translate", str(tmp_path / "ft"), "--text", "a b c d", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == "d c b a"
    assert main(["evaluate", str(tmp_path / "ft"), "--data", str(dev), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["bleu"] == pytest.approx(report["bleu"])


def test_teacher_forcing_batches_and_loss_match_a_naive_computation(pretrained):
    task = get_task("seq2seq")
    loaded = load(pretrained, "cpu")
    info = TaskConfig(task="seq2seq", max_seq_len=16)
    examples = task.read(write_pairs(pretrained.parent / "p.tsv", 3, 2), Columns())
    features = task.encode(examples, loaded.tokenizer, "t5", info, labelled=True)
    pad = loaded.tokenizer.special_id("pad")
    batch = task.collate(features, pad)
    model = task.build_head(loaded.model, info).train(False)
    n = sum(len(f["label"]) for f in features)
    loss, _ = task.loss(None)(model, batch | {"scale": torch.tensor(1.0), "norm": torch.tensor(float(n))})
    naive = []
    for f in features:
        src, tgt = torch.tensor([f["input_ids"]]), torch.tensor([f["label"]])
        decoder = torch.cat([torch.tensor([[pad]]), tgt[:, :-1]], dim=1)
        logits = loaded.model(src, None, decoder)
        naive.append(torch.nn.functional.cross_entropy(logits[0], tgt[0], reduction="sum"))
    torch.testing.assert_close(loss, torch.stack(naive).sum() / n)


def test_seq2seq_needs_an_encoder_decoder(tmp_path, capsys):
    from tests.helpers import tiny_checkpoint

    tiny_checkpoint(tmp_path / "bert")
    train = write_pairs(tmp_path / "train.tsv", 10, 0)
    argv = ["finetune", "--task", "seq2seq", "--model", str(tmp_path / "bert"), "--train", str(train),
            "--out", str(tmp_path / "ft"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "fine-tunes an encoder-decoder (t5 family), not a bert model" in lines[0]
    assert not (tmp_path / "ft").exists() or not any((tmp_path / "ft").rglob("*.safetensors"))


def test_a_hugging_face_t5_fine_tunes_and_predicts(tmp_path, capsys):
    """A transformers T5 directory (with a Unigram tokenizer.json) as --model; the fine-tuned model then answers
    lmforge predict with its generated text."""
    from transformers import T5Config, T5ForConditionalGeneration

    from lmforge.tokenizer import Tokenizer

    train = write_pairs(tmp_path / "train.tsv", 40, 0)
    texts = [line for row in train.read_text().splitlines()[1:] for line in row.split("\t")]
    tokenizer = Tokenizer.train_unigram(texts, 40, encoder=True)
    pad, eos = tokenizer.special_id("pad"), tokenizer.special_id("sep")
    torch.manual_seed(0)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                      pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, dropout_rate=0.0)  # fmt: skip
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "hf", safe_serialization=True)
    tokenizer.save(tmp_path / "hf" / "tokenizer.json")
    argv = ["finetune", "--task", "seq2seq", "--model", str(tmp_path / "hf"), "--train", str(train), "--eval",
            str(train), "--out", str(tmp_path / "ft"), "--max-steps", "4", "--batch-size", "8",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "ft" / "eval" / "report.json").read_text())
    assert report["task"] == "seq2seq" and 0 <= report["bleu"] <= 100
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "ft"), "--text", "a b c", "--text", "d e"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in records] == ["a b c", "d e"] and all(isinstance(r["output"], str) for r in records)
