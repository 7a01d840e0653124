"""Preparing into a folder that holds other things, and inputs that are not regular files: nothing else in the folder
is lost, a folder is never seen half-written, nothing hangs, and every mistake is one line."""

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmforge.data import ensure_prepared, load_documents, load_prepared, prepare, prepare_documents, read_text
from lmforge.data.prepared_folder import OWNED
from lmforge.errors import LmforgeError
from lmforge.tokenizer import MAX_VOCAB_SIZE, Tokenizer

TEXT = "".join(f"Document {i} starts here. It has a second sentence.\n\n" for i in range(40))


def text_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEXT, encoding="utf-8")
    return path


def others(folder: Path) -> dict[str, bytes]:
    """Every file under folder that preparation does not own, with its bytes."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files if str(p.relative_to(folder)) not in OWNED}


def add_a_run(folder: Path) -> None:
    """What a training run and its user keep in a folder: checkpoints, latest, metrics, notes."""
    step = folder / "step-000001"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(os.urandom(256))
    (step / "tokenizer.json").write_text("{}")
    (folder / "latest").write_text("step-000001\n")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 3.25}\n')
    (folder / "notes.txt").write_text("mine")


def hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_preparing_again_keeps_a_runs_files(tmp_path):
    out = prepare([text_file(tmp_path / "input.txt")], "char", tmp_path / "out", progress=False)
    add_a_run(out)
    before = others(out)
    prepare([tmp_path / "input.txt"], "bpe", out, vocab_size=300, progress=False)
    prepare([tmp_path / "input.txt"], "char", out, progress=False)
    assert others(out) == before and not hidden(out)
    data = load_prepared(out)
    assert data.meta["tokenizer_kind"] == "char"
    assert data.tokenizer.decode(np.concatenate([data.train, data.val])) == TEXT


def test_an_input_inside_the_out_folder_is_read_before_anything_is_replaced(tmp_path):
    out = tmp_path / "out"
    add_a_run(out)
    text = text_file(out / "input.txt")
    before = others(out)
    for tokenizer in ("char", "bpe"):
        prepare([text], tokenizer, out, vocab_size=300, progress=False)
        assert others(out) == before and not hidden(out)
        data = load_prepared(out)
        assert data.tokenizer.decode(np.concatenate([data.train, data.val])) == TEXT
        assert data.meta["sources"][0]["path"] == str(text.resolve())


def test_documents_keep_other_files_and_a_new_layout_drops_the_old_offsets(tmp_path):
    out = tmp_path / "out"
    add_a_run(out)
    text = text_file(out / "input.txt")
    before = others(out)
    prepare_documents([text], "wordpiece", out, vocab_size=100, val_fraction=0.25, progress=False)
    assert load_documents(out).train.n_documents == 30
    prepare([text], "char", out, progress=False)
    assert not list(out.glob("*.npy")) and load_prepared(out).meta.get("layout") is None
    prepare_documents([text], "bpe", out, vocab_size=300, val_fraction=0.25, progress=False)
    assert load_documents(out).val.n_documents == 10
    assert others(out) == before and not hidden(out)


def test_a_failure_while_writing_leaves_the_old_data(tmp_path, monkeypatch):
    out = prepare([text_file(tmp_path / "input.txt")], "char", tmp_path / "out", progress=False)
    add_a_run(out)
    everything = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken_save(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(Tokenizer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        prepare([tmp_path / "input.txt"], "bpe", out, vocab_size=300, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == everything and not hidden(out)
    assert load_prepared(out).meta["tokenizer_kind"] == "char"


def test_a_folder_is_never_seen_half_replaced(tmp_path, monkeypatch):
    """Killed between renaming the data and the new meta.json: the old meta.json is gone, so nothing loads it."""
    out = prepare([text_file(tmp_path / "input.txt")], "char", tmp_path / "out", progress=False)
    replace = os.replace

    def killed_before_meta(src, dst):
        if Path(dst) == out / "meta.json":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_meta)
    with pytest.raises(KeyboardInterrupt):
        prepare([tmp_path / "input.txt"], "bpe", out, vocab_size=300, progress=False)
    with pytest.raises(LmforgeError, match="no meta.json"):
        load_prepared(out)


def test_loading_refuses_a_tokenizer_that_is_not_the_one_in_meta(tmp_path):
    out = prepare([text_file(tmp_path / "input.txt")], "char", tmp_path / "out", progress=False)
    Tokenizer.train_char(["ab"]).save(out / "tokenizer.json")
    with pytest.raises(LmforgeError, match="tokenizer.json has 3 tokens but meta.json says .*prepare the data again"):
        load_prepared(out)


def test_files_by_our_names_without_meta_json_are_not_replaced(tmp_path):
    """A nanoGPT data folder has a train.bin of its own."""
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    (folder / "train.bin").write_bytes(b"nanoGPT's")
    with pytest.raises(LmforgeError, match="holds train.bin but no meta.json.*move those files") as e:
        prepare([text_file(folder / "input.txt")], "char", folder, progress=False)
    assert "\n" not in str(e.value) and (folder / "train.bin").read_bytes() == b"nanoGPT's"


@pytest.mark.parametrize(
    "build, tokenizer, size, message",
    [
        (prepare, "bpe", MAX_VOCAB_SIZE + 1, f"too large: give at most {MAX_VOCAB_SIZE}"),
        (prepare, "wordpiece", 5, "too small for WordPiece.*at least 6"),
        (prepare_documents, "bpe", 260, "too small for byte-level BPE.*at least 261"),  # RoBERTa's 5 specials
    ],
)
def test_a_vocab_size_out_of_range_is_refused_before_reading_the_data(tmp_path, build, tokenizer, size, message):
    with pytest.raises(LmforgeError, match=message) as e:
        build([tmp_path / "not-read-yet.txt"], tokenizer, tmp_path / "out", vocab_size=size, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


@pytest.fixture
def fifo(tmp_path) -> Iterator[Path]:
    """A named pipe nobody writes to. Should a reader open it anyway, the other end is opened and closed every
    second, so the reader gets end-of-file and the test fails instead of hanging."""
    path = tmp_path / "pipe"
    os.mkfifo(path)
    stop = threading.Event()

    def unblock() -> None:
        while not stop.wait(1):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock, daemon=True).start()
    yield path
    stop.set()


READERS = {
    "read_text": lambda path, tmp: read_text(path),
    "prepare": lambda path, tmp: prepare([path], "char", tmp / "out", progress=False),
    "prepare_documents": lambda path, tmp: prepare_documents([path], "char", tmp / "out", progress=False),
    "ensure_prepared": lambda path, tmp: ensure_prepared(path, "char", 8192, 0.1, tmp / "cache", progress=False),
}


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
@pytest.mark.parametrize("source", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("reader", READERS)
def test_an_input_that_is_not_a_regular_file_is_refused_before_it_is_opened(tmp_path, fifo, reader, source, suffix):
    """/dev/zero used to be hashed forever, and a pipe (<(cmd)) was used up by the hash, then said to be empty."""
    if source == "/dev/zero" and not Path(source).exists():
        pytest.skip("no /dev/zero")
    path = tmp_path / f"input{suffix}"
    path.symlink_to(fifo if source == "fifo" else source)
    with pytest.raises(LmforgeError, match=r"input\.\w+ is not a regular file .*save it to a file first") as e:
        READERS[reader](path, tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_folder_given_as_a_records_file_is_named_a_directory(tmp_path):
    (tmp_path / "docs.jsonl").mkdir()
    with pytest.raises(LmforgeError, match="docs.jsonl is a directory: give a UTF-8 text file"):
        prepare([tmp_path / "docs.jsonl"], "char", tmp_path / "out", progress=False)
