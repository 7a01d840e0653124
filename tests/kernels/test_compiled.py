"""compile_layers: the same outputs as the eager layers, through Inductor and through torch.compile's tracing alone,
and an eager fallback when the compiler fails."""

import shutil

import pytest
import torch
from helpers import padded_batch, tiny_gpt
from torch._dynamo.utils import counters

from lmforge.config import BertConfig
from lmforge.kernels import apply_kernels
from lmforge.kernels import compiled as compiled_module
from lmforge.kernels.compiled import CompiledLayers, compile_layers
from lmforge.kernels.quantize import Quantization, quantize_model
from lmforge.models import Bert


def tiny_bert(dtype: str = "int8", n_layer: int = 2):
    torch.manual_seed(0)
    model = Bert(BertConfig(vocab_size=40, n_layer=n_layer, n_head=2, d_model=32, max_seq_len=16, dropout=0.0)).eval()
    if dtype != "fp32":
        quantize_model(model, Quantization(dtype))
    return apply_kernels(model)


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_a_padded_batch_runs_packed_and_compiled_as_eagerly(aot_eager, dtype):
    ids, mask = padded_batch(40, b=3, t=12)
    many_ids, many_mask = padded_batch(40, b=24, t=12)  # 283 packed rows: more than an int8 layer's CHUNK_ROWS
    model = tiny_bert(dtype, n_layer=1)  # one layer: tracing a stack's symbolic shapes takes seconds a layer
    with torch.inference_mode():
        eager, _ = model.hidden(ids, mask)
        many_eager, _ = model.hidden(many_ids, many_mask)
        full, _ = model.hidden(ids, torch.ones_like(mask))  # no padding: the unpacked layers
        compile_layers(model)
        assert isinstance(model.encoder.packed_layers, CompiledLayers)
        out, _ = model.hidden(ids, mask)
        graphs = counters["stats"]["unique_graphs"]
        many, _ = model.hidden(many_ids, many_mask)
    if dtype == "int8":  # one graph serves every row count (fp32's products pick their kernel by it: kernels.linear)
        assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(many, many_eager, rtol=1e-5, atol=1e-5)
    assert not torch.equal(full[1], out[1])  # the padded row really was packed
    assert compile_layers(model).encoder.packed_layers is model.encoder.packed_layers  # a second call adds nothing


def test_decoding_with_a_kv_cache_compiled_gives_the_eager_tokens(aot_eager):
    model = tiny_gpt(max_seq_len=32, n_layer=1)
    quantize_model(model, Quantization("int8"))
    prompt = torch.tensor([[3, 7, 1, 9]])
    eager = model.generate(prompt, 12, greedy=True)
    compile_layers(model)
    assert torch.equal(model.generate(prompt, 12, greedy=True), eager)
    assert model.decoder.layers.calls == 12  # the prompt, then each new token but the last, went through them


def test_a_failing_compiler_leaves_one_line_and_runs_eagerly(monkeypatch, capsys):
    def broken(graph, inputs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(compiled_module, "BACKEND", broken)
    ids, mask = padded_batch(40, b=2, t=8)
    model = tiny_bert()
    with torch.inference_mode():
        eager, _ = model.hidden(ids)
        compile_layers(model)
        first, _ = model.hidden(ids)
        second, _ = model.hidden(ids)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "RuntimeError: no C++ compiler here" in err
    assert "running eagerly" in err
    assert model.encoder.layers.failed


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="Inductor needs a compiler")
def test_inductor_fuses_the_int8_layers_within_rounding(capsys):
    """Inductor itself: each int8 layer's rounding and scaling fused into C++ loops. Rounding an activation at a
    half step may go the other way than eagerly (a quotient computed another way), so the outputs agree to a small
    fraction of the int8 step, not bit for bit."""
    ids, mask = padded_batch(40, b=3, t=12)
    model = tiny_bert(n_layer=1)
    with torch.inference_mode():
        eager, _ = model.hidden(ids, mask)
        compile_layers(model)
        out, _ = model.hidden(ids, mask)
    assert (out - eager).abs().max() < 1e-2 * eager.abs().max()
    assert "torch.compile built the layers" in capsys.readouterr().err
    assert model.encoder.packed_layers.calls == 1 and not model.encoder.packed_layers.failed


def test_lmforges_sources_are_part_of_the_compile_cache_key():
    """A warm cache must not serve a graph traced through an older lmforge.kernels (a custom operator's backward is
    not in what Dynamo traces): the tag is a digest of those sources, set by apply_kernels, after a user's own tag."""
    import hashlib
    from pathlib import Path

    from torch.compiler import config

    folder = Path(compiled_module.__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.py"), *folder.glob("*.c")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    assert any(path.name == "linear.py" for path in folder.glob("*.py"))
    with config.patch(cache_key_tag=""):  # torch's config takes no monkeypatch
        apply_kernels(torch.nn.Linear(2, 2))
        assert config.cache_key_tag == f"lmforge-{digest.hexdigest()[:16]}"
    with config.patch(cache_key_tag="mine"):
        apply_kernels(torch.nn.Linear(2, 2))
        apply_kernels(torch.nn.Linear(2, 2))
        assert config.cache_key_tag == f"mine+lmforge-{digest.hexdigest()[:16]}"
