"""Document-aware preparation: documents, sentences, offsets that match the tokens, and clear errors."""

import json

import numpy as np
import pytest

from lmforge.data import ensure_prepared, load_documents, prepare, prepare_documents, read_documents
from lmforge.data.documents import split_sentences
from lmforge.errors import LmforgeError

TEXT = (
    "The cat sat on the mat. The dog ran!\nA bird flew away.\n\n"
    "今天天气很好。我们去公园吧！好的\n\n"
    "  \n\n"  # a blank document is no document
    "Third doc here. Is it? Yes.\n\n\n"
    "Fourth and last.\n"
)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_documents_are_separated_by_blank_lines(text_file):
    docs = read_documents(text_file)
    assert len(docs) == 4 and docs[1] == "今天天气很好。我们去公园吧！好的" and docs[3].strip() == "Fourth and last."


def test_jsonl_records_are_documents(tmp_path):
    path = tmp_path / "docs.jsonl"
    records = [json.dumps({"text": "One.\n\nStill one."}), "", json.dumps({"text": "两个。", "id": 2})]
    path.write_text("\n".join(records) + "\n")
    assert read_documents(path) == ["One.\n\nStill one.", "两个。"]
    path.write_text('{"text": "fine"}\n{"txt": "no"}\n')
    with pytest.raises(LmforgeError, match=r"docs.jsonl:2: a record needs a \"text\" string"):
        read_documents(path)
    path.write_text('{"text": "fine"}\n{broken\n')
    with pytest.raises(LmforgeError, match="docs.jsonl:2: not valid JSON"):
        read_documents(path)


@pytest.mark.parametrize(
    "doc, sentences",
    [
        ("The cat sat. The dog ran! Did it? Yes", ["The cat sat.", "The dog ran!", "Did it?", "Yes"]),
        ("line one\nline two\n", ["line one", "line two"]),
        ("今天天气很好。我们去公园吧！真的？好", ["今天天气很好。", "我们去公园吧！", "真的？", "好"]),
        ("Mixed 中文。English too. 3.14 stays", ["Mixed 中文。", "English too.", "3.14 stays"]),
    ],
)
def test_sentences(doc, sentences):
    assert split_sentences(doc) == sentences


def test_prepared_documents_round_trip_by_sentence(tmp_path, text_file):
    out = prepare_documents([text_file], "wordpiece", tmp_path / "out", vocab_size=200, val_fraction=0.25,
                            progress=False)  # fmt: skip
    data = load_documents(out)
    tok = data.tokenizer
    assert tok.kind == "wordpiece" and data.meta["layout"] == "documents"
    assert (data.train.n_documents, data.val.n_documents) == (3, 1)  # the last quarter of 4 documents
    train = data.train
    sentences = [tok.decode(train.tokens[a:b]) for a, b in zip(train.sentences[:-1], train.sentences[1:], strict=True)]
    assert sentences[:3] == ["the cat sat on the mat.", "the dog ran!", "a bird flew away."]
    assert sentences[3:6] == ["今 天 天 气 很 好 。", "我 们 去 公 园 吧 ！", "好 的"]
    assert list(train.documents) == [0, 3, 6, 9]
    assert tok.decode(data.val.tokens) == "fourth and last."
    meta = data.meta
    assert (meta["n_train_documents"], meta["n_train_sentences"], meta["n_train_tokens"]) == (3, 9, len(train.tokens))
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json", "tokenizer.json", "train.bin", "train.documents.npy", "train.sentences.npy",
        "val.bin", "val.documents.npy", "val.sentences.npy",
    ]  # fmt: skip


def test_byte_level_bpe_documents_get_encoder_specials_and_keep_spaces(tmp_path, text_file):
    data = load_documents(prepare_documents([text_file], "bpe", tmp_path / "out", vocab_size=300, progress=False))
    tok = data.tokenizer
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (0, 2, 1, 4) and tok.eos_id is None
    first_doc = data.train.tokens[: data.train.sentences[3]]
    assert tok.decode(first_doc) == "The cat sat on the mat. The dog ran! A bird flew away."


def test_no_val_split_and_too_few_documents(tmp_path, text_file):
    data = load_documents(prepare_documents([text_file], "wordpiece", tmp_path / "a", 200, 0.0, progress=False))
    assert data.train.n_documents == 4 and data.val.n_documents == 0 and len(data.val.tokens) == 0
    one = tmp_path / "one.txt"
    one.write_text("Just one document. No blank line.\n")
    with pytest.raises(LmforgeError, match="1 document.*blank lines"):
        prepare_documents([one], "wordpiece", tmp_path / "b", 200, 0.1, progress=False)


def test_a_token_stream_is_not_documents_and_damage_is_found(tmp_path, text_file):
    stream = prepare([text_file], "char", tmp_path / "stream", progress=False)
    with pytest.raises(LmforgeError, match="not documents.*--documents"):
        load_documents(stream)
    out = prepare_documents([text_file], "wordpiece", tmp_path / "out", 200, 0.25, progress=False)
    np.save(out / "train.sentences.npy", np.array([0, 1, 2], dtype=np.int64))
    with pytest.raises(LmforgeError, match="offsets do not match"):
        load_documents(out)
    (out / "train.documents.npy").unlink()
    with pytest.raises(LmforgeError, match="missing or damaged"):
        load_documents(out)


def test_ensure_prepared_builds_documents_once_per_setting(tmp_path, text_file):
    cache = tmp_path / "cache"
    args = (text_file, "wordpiece", 200, 0.25, cache)
    first = ensure_prepared(*args, progress=False, builder=prepare_documents)
    assert load_documents(first).train.n_documents == 3
    assert ensure_prepared(*args, progress=False, builder=prepare_documents) == first
    assert ensure_prepared(*args, progress=False, lowercase=False, builder=prepare_documents) != first
    assert ensure_prepared(*args, progress=False) != first  # a token stream is another folder
