import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data import PreparedData, clean_text, ensure_prepared, load_prepared, prepare, read_text
from lmforge.data.prepared_folder import token_dtype
from lmforge.errors import LmforgeError
from lmforge.tokenizer import EOS, Tokenizer

SHAKESPEARE = Path(__file__).parents[3] / "shared" / "data" / "tinyshakespeare.txt"
RAW = "".join(
    f"Line {i}.\r\nSecond: 中文, emoji 👨\u200d👩\u200d👧, cafe\u0301.\n\tTabbed\ufeff line\n" for i in range(30)
)


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text(RAW, encoding="utf-8", newline="")
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_token_dtype():
    assert token_dtype(66) == token_dtype(65536) == np.uint16
    assert token_dtype(65537) == token_dtype(200_000) == np.uint32


def test_char_prepare_round_trips_and_val_is_the_tail(tmp_path, text_file):
    out = prepare([text_file], "char", tmp_path / "out", val_fraction=0.1, progress=False)
    data = load_prepared(out)
    assert isinstance(data, PreparedData) and data.path == out
    cleaned = clean_text(read_text(text_file))
    n = len(cleaned)  # one token per character
    assert (len(data.train), len(data.val)) == (int(n * 0.9), n - int(n * 0.9))
    assert data.tokenizer.decode(data.train) + data.tokenizer.decode(data.val) == cleaned
    assert data.tokenizer.decode(data.val) == cleaned[int(n * 0.9) :]
    assert isinstance(data.train, np.memmap) and not data.train.flags.writeable
    assert data.train.dtype == np.uint16


def test_meta_matches_files(tmp_path, text_file):
    out = prepare([text_file], "char", tmp_path / "out", progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert leftovers(out) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert meta["dtype"] == "uint16" and meta["format"] == 1 and meta["tokenizer"] == "tokenizer.json"
    assert meta["tokenizer_kind"] == "char" and meta["val_fraction"] == 0.1
    assert (out / "train.bin").stat().st_size == 2 * meta["n_train_tokens"]
    assert (out / "val.bin").stat().st_size == 2 * meta["n_val_tokens"]
    assert meta["vocab_size"] == Tokenizer.load(out / "tokenizer.json").vocab_size
    [source] = meta["sources"]
    assert source["path"] == str(text_file.resolve()) and source["bytes"] == text_file.stat().st_size
    assert len(source["sha256"]) == 64


def test_large_vocab_is_stored_as_uint32(tmp_path):
    big = Tokenizer.train_char(["".join(chr(0x30000 + i) for i in range(70_000))])
    text = "".join(chr(0x30000 + i) for i in range(65_530, 65_560)) * 5
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    data = load_prepared(prepare([tmp_path / "in.txt"], big, tmp_path / "out", progress=False))
    assert data.meta["dtype"] == "uint32" and data.train.dtype == np.uint32
    assert (tmp_path / "out" / "train.bin").stat().st_size == 4 * len(data.train)
    assert int(data.train.max()) > 65535
    assert big.decode(data.train) + big.decode(data.val) == text


def test_bpe_files_are_joined_by_eos(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Alpha text, 中文 and more alpha.\n" * 20, encoding="utf-8")
    b.write_text("Beta 👋 text\twith tabs.\n" * 20, encoding="utf-8")
    data = load_prepared(prepare([a, b], "bpe", tmp_path / "out", vocab_size=300, val_fraction=0.0, progress=False))
    tokens = np.asarray(data.train)
    assert len(data.val) == 0 and data.meta["tokenizer_kind"] == "bpe"
    assert (tokens == data.tokenizer.eos_id).sum() == 1
    assert data.tokenizer.decode(tokens) == a.read_text() + EOS + b.read_text()


def test_tokenizer_file_and_instance_are_used_as_given(tmp_path, text_file):
    tok = Tokenizer.train_char(["abc"])
    tok.save(tmp_path / "tok.json")
    for spec in (tok, tmp_path / "tok.json", str(tmp_path / "tok.json")):
        data = load_prepared(prepare([text_file], spec, tmp_path / "out", progress=False))
        assert data.tokenizer.vocab_size == 4
    with pytest.raises(LmforgeError, match="neither char, bpe, wordpiece nor unigram"):
        prepare([text_file], "bpee", tmp_path / "other", progress=False)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="needs the shared tinyshakespeare.txt")
def test_realistic_shakespeare_bpe(tmp_path):
    excerpt = tmp_path / "shakespeare.txt"
    excerpt.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    data = load_prepared(prepare([excerpt], "bpe", tmp_path / "out", vocab_size=512, progress=False))
    n_tokens = len(data.train) + len(data.val)
    assert n_tokens < 0.6 * 200_000  # merges learned from the text compress it (bytes alone: 1.0)
    assert data.tokenizer.decode(np.concatenate([data.train, data.val])) == excerpt.read_text()


def test_progress_false_is_silent(tmp_path, text_file, capfd):
    prepare([text_file], "bpe", tmp_path / "out", vocab_size=300, progress=False)
    assert capfd.readouterr().err == ""
    prepare([text_file], "char", tmp_path / "out", progress=True)
    assert "tokenizing" in capfd.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"  \n\t \n", "only whitespace"),
        (b"text\x00with nul", "binary"),
        ("utf-16 text".encode("utf-16"), "binary"),
        ("caf\xe9 latin-1".encode("latin-1"), "not valid UTF-8"),
    ],
)
def test_bad_inputs(tmp_path, content, message):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    with pytest.raises(LmforgeError, match=message) as e:
        prepare([path], "char", tmp_path / "out", progress=False)
    assert "\n" not in str(e.value)
    assert leftovers(tmp_path) == ["in.txt"]


def test_missing_input_and_directory_input(tmp_path):
    with pytest.raises(LmforgeError, match="data file .*missing.txt not found"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(LmforgeError, match="is a directory"):
        read_text(tmp_path)


def test_bom_is_dropped(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffhello".encode())
    assert read_text(tmp_path / "bom.txt") == "hello"


def test_too_small_leaves_nothing(tmp_path):
    (tmp_path / "in.txt").write_text("abcdefghij")
    with pytest.raises(LmforgeError, match="too small"):
        prepare([tmp_path / "in.txt"], "char", tmp_path / "out", val_fraction=0.1, progress=False)
    assert leftovers(tmp_path) == ["in.txt"]
    prepare([tmp_path / "in.txt"], "char", tmp_path / "out", val_fraction=0.2, progress=False)  # 2 val tokens


def test_failure_while_writing_leaves_nothing(tmp_path, text_file, monkeypatch):
    def broken_save(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Tokenizer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        prepare([text_file], "char", tmp_path / "out", progress=False)
    assert leftovers(tmp_path) == ["input.txt"]


def test_out_dir_rules(tmp_path, text_file):
    (tmp_path / "empty").mkdir()
    prepare([text_file], "char", tmp_path / "empty", progress=False)
    assert (tmp_path / "empty" / "meta.json").is_file()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    prepare([text_file], "char", tmp_path / "busy", progress=False)  # a folder with other files: they are kept
    assert leftovers(tmp_path / "busy") == ["meta.json", "notes.txt", "tokenizer.json", "train.bin", "val.bin"]
    (tmp_path / "busy" / "meta.json").unlink()
    with pytest.raises(LmforgeError, match="not prepared data"):  # files by our names, not known to be ours
        prepare([text_file], "char", tmp_path / "busy", progress=False)
    with pytest.raises(LmforgeError, match="is a file"):
        prepare([text_file], "char", text_file, progress=False)

    other = tmp_path / "other.txt"
    other.write_text("a different text\n" * 10)
    prepare([other], "char", tmp_path / "empty", progress=False)  # a prepared folder is replaced
    data = load_prepared(tmp_path / "empty")
    assert data.tokenizer.decode(data.train) + data.tokenizer.decode(data.val) == other.read_text()
    assert leftovers(tmp_path) == ["busy", "empty", "input.txt", "other.txt"]


def test_load_prepared_errors(tmp_path, text_file):
    with pytest.raises(LmforgeError, match="no meta.json"):
        load_prepared(tmp_path)
    out = prepare([text_file], "char", tmp_path / "out", progress=False)
    train = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(train[:-2])
    with pytest.raises(LmforgeError, match="train.bin has .* bytes but meta.json says"):
        load_prepared(out)
    (out / "train.bin").write_bytes(train)
    load_prepared(out)
    (out / "val.bin").unlink()
    with pytest.raises(LmforgeError, match="val.bin is missing"):
        load_prepared(out)
    (out / "meta.json").write_text("{broken")
    with pytest.raises(LmforgeError, match="meta.json is damaged"):
        load_prepared(out)


@pytest.fixture
def encode_calls(monkeypatch) -> list:
    calls = []
    original = Tokenizer.encode_batch

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(Tokenizer, "encode_batch", counting)
    return calls


def test_ensure_prepared_caches_by_content_and_settings(tmp_path, text_file, encode_calls):
    cache = tmp_path / "cache"
    first = ensure_prepared(text_file, "char", 8192, 0.1, cache, progress=False)
    assert first.parent == cache and load_prepared(first).meta["tokenizer_kind"] == "char"
    assert len(encode_calls) == 1
    mtime = (first / "train.bin").stat().st_mtime_ns
    assert ensure_prepared(text_file, "char", 8192, 0.1, cache, progress=False) == first
    assert ensure_prepared(text_file, "char", 300, 0.1, cache, progress=False) == first  # vocab_size is for bpe
    assert len(encode_calls) == 1 and (first / "train.bin").stat().st_mtime_ns == mtime

    assert ensure_prepared(text_file, "char", 8192, 0.2, cache, progress=False) != first
    assert ensure_prepared(text_file, "bpe", 300, 0.1, cache, progress=False) != first
    text_file.write_text("new content\n" * 20)
    assert ensure_prepared(text_file, "char", 8192, 0.1, cache, progress=False) != first
    assert len(encode_calls) == 4 and len(list(cache.iterdir())) == 4


def test_ensure_prepared_keys_a_tokenizer_file_by_content(tmp_path, text_file):
    tok_file = tmp_path / "tok.json"
    Tokenizer.train_char(["abc"]).save(tok_file)
    first = ensure_prepared(text_file, str(tok_file), 8192, 0.1, tmp_path / "cache", progress=False)
    Tokenizer.train_char(["abcd"]).save(tok_file)
    second = ensure_prepared(text_file, str(tok_file), 8192, 0.1, tmp_path / "cache", progress=False)
    assert second != first and load_prepared(second).tokenizer.vocab_size == 5


def test_ensure_prepared_passes_prepared_folders_and_refuses_others(tmp_path, text_file):
    out = prepare([text_file], "char", tmp_path / "out", progress=False)
    assert ensure_prepared(out, "bpe", 8192, 0.1, tmp_path / "cache") == out
    assert not (tmp_path / "cache").exists()
    with pytest.raises(LmforgeError, match="lmforge data prepare"):
        ensure_prepared(tmp_path, "char", 8192, 0.1, tmp_path / "cache")
    with pytest.raises(LmforgeError, match="not found"):
        ensure_prepared(tmp_path / "nope.txt", "char", 8192, 0.1, tmp_path / "cache")
