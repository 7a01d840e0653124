"""Hostile checkpoints: truncated or tampered safetensors, wrong-shape tensors, damaged config and training state
are rejected with an LmforgeError that names the file (or the tensor); nothing else escapes."""

import json
import shutil
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lmforge.checkpoint import load_checkpoint, load_model
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.recipes.pretrain import train

FUZZ = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    corpus = root / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\n" * 50, encoding="utf-8")
    settings = ["model.n_layer=1", "model.n_head=2", "model.d_model=16", "model.max_seq_len=8",
                "train.batch_size=2", "train.max_steps=1", "train.progress=false", f"data.path={corpus}",
                f"train.out={root / 'run'}"]  # fmt: skip
    return train(load_config("char-small", settings)).checkpoint


def loads_or_fails_clearly(path, with_state=False) -> bool:
    """True when the checkpoint loads; False after an LmforgeError that names a file or tensor of it."""
    try:
        load_model(path) if not with_state else load_checkpoint(path, with_state=True)
        return True
    except LmforgeError as e:
        assert str(path) in str(e) or "tensor" in str(e), str(e)
        return False


@FUZZ
@given(st.floats(0, 1, exclude_max=True))
def test_truncated_weights_are_rejected(ckpt, tmp_path_factory, fraction):
    copy = tmp_path_factory.mktemp("t") / "c"
    shutil.copytree(ckpt, copy)
    data = (ckpt / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: int(len(data) * fraction)])
    assert not loads_or_fails_clearly(copy)


@FUZZ
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8))
def test_tampered_bytes_load_or_fail_clearly(ckpt, tmp_path_factory, edits):
    copy = tmp_path_factory.mktemp("b") / "c"
    shutil.copytree(ckpt, copy)
    for name in ("model.safetensors", "train_state.safetensors"):
        data = bytearray((ckpt / name).read_bytes())
        header = 8 + struct.unpack("<Q", data[:8])[0]
        for where, byte in edits:  # half the edits hit the header, half the tensors
            data[int(where * header) if byte % 2 else int(where * len(data))] = byte
        (copy / name).write_bytes(bytes(data))
    loads_or_fails_clearly(copy)
    loads_or_fails_clearly(copy, with_state=True)


def test_tampered_header_shape_and_wrong_shape_tensor(ckpt, tmp_path):
    shutil.copytree(ckpt, tmp_path / "c")
    weights = load_file(ckpt / "model.safetensors")
    weights["decoder.blocks.0.ffn.up.weight"] = weights["decoder.blocks.0.ffn.up.weight"].reshape(32, 32)
    save_file(weights, tmp_path / "c" / "model.safetensors")
    with pytest.raises(
        LmforgeError, match=r"'decoder.blocks.0.ffn.up.weight' has shape \(32, 32\), expected \(64, 16\)"
    ):
        load_model(tmp_path / "c")
    weights["decoder.blocks.0.ffn.up.weight"] = torch.full((64, 16), float("nan"))
    save_file(weights, tmp_path / "c" / "model.safetensors")
    with pytest.raises(LmforgeError, match="NaN or infinite"):
        load_model(tmp_path / "c")
    data = (ckpt / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["tok_emb.weight"]["shape"] = [1, 1]  # consistent JSON, inconsistent with the data offsets
    text = json.dumps(header).encode().ljust(n)
    (tmp_path / "c" / "model.safetensors").write_bytes(data[:8] + text[:n] + data[8 + n :])
    with pytest.raises(LmforgeError, match="damaged"):
        load_model(tmp_path / "c")


@pytest.mark.parametrize(
    "name, content",
    [("config.yaml", b"\xff\xfe garbage"), ("config.yaml", b"model: [1, 2"),
     ("config.yaml", b"model:\n  n_layer: -1\n"), ("train_state.json", b'{"step": 1'), ("train_state.json", b"[]"),
     ("train_state.json", b'{"step": 1}'), ("train_state.safetensors", b"\x00" * 7), ("tokenizer.json", b"{}")],
)  # fmt: skip
def test_damaged_files_are_named(ckpt, tmp_path, name, content):
    shutil.copytree(ckpt, tmp_path / "c")
    (tmp_path / "c" / name).write_bytes(content)
    assert not loads_or_fails_clearly(tmp_path / "c", with_state=True)


def test_a_tokenizer_larger_than_the_embedding_table_is_named(ckpt, tmp_path, capsys):
    """Its last ids would index past the model's rows: an IndexError in the middle of generation, before this check."""
    from lmforge.cli.main import main
    from lmforge.tokenizer import Tokenizer

    shutil.copytree(ckpt, tmp_path / "c")
    Tokenizer.train_char(["the quick brown fox jumps over the lazy dog!"]).save(tmp_path / "c" / "tokenizer.json")
    with pytest.raises(LmforgeError, match=r"tokenizer.json has 29 tokens but the model has 13 embedding rows"):
        load_model(tmp_path / "c")
    assert main(["generate", str(tmp_path / "c"), "--prompt", "the", "--max-new-tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "c" / "tokenizer.json") in err
