"""A prepared folder's files: train.bin and val.bin (raw numpy arrays), meta.json, tokenizer.json; written atomically,
checked, and opened as read-only memmaps.

Writing replaces only these files, each renamed into place whole, and meta.json last: a folder with a meta.json is
complete, and anything else kept in it (the input text, a run's checkpoints) is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.atomic import fsync_dir
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

FORMAT = 1
# the files preparation writes (documents.py adds the offset arrays); meta.json, written last, says they are ours
OWNED = ("train.bin", "val.bin", "tokenizer.json", "meta.json") + tuple(
    f"{split}.{offsets}.npy" for split in ("train", "val") for offsets in ("sentences", "documents")
)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves the files while every id fits in it (ids < 65536), as in nanoGPT."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def check_out_dir(out_dir: Path) -> None:
    """Refuses a file, and a folder holding files by our names but no meta.json: they are someone else's (nanoGPT
    writes a train.bin too), and preparing would replace them."""
    if out_dir.exists() and not out_dir.is_dir():
        raise LmforgeError(f"{out_dir} is a file: give a folder for the prepared data")
    if (out_dir / "meta.json").is_file():
        return
    if taken := [name for name in OWNED if (out_dir / name).exists()]:
        raise LmforgeError(
            f"{out_dir} holds {', '.join(taken)} but no meta.json, so it is not prepared data that preparing may "
            "replace: move those files or give another folder"
        )


def write_folder(out_dir: Path, arrays: dict[str, np.ndarray], tok: Tokenizer, meta: dict) -> None:
    """Writes and fsyncs every file in a hidden folder inside out_dir, then moves them into place (see _publish); a
    failure while writing (a full disk) leaves out_dir as it was.

    The names are among OWNED. One ending in .npy is written with its dtype and shape (np.save); others as raw bytes,
    described in meta.
    """
    created = not out_dir.exists()
    tmp = out_dir / f".prepare.tmp-{uuid.uuid4().hex[:8]}"  # the same file system, so a rename is atomic
    tmp.mkdir(parents=True)
    try:
        for name, array in arrays.items():
            with open(tmp / name, "wb") as f:
                if name.endswith(".npy"):
                    np.save(f, array)
                else:
                    array.tofile(f)
        tok.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for file in tmp.iterdir():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        _publish(tmp, out_dir)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Moves the finished files onto out_dir's: the old meta.json goes first and the new one comes last, so a reader
    sees the old data, no prepared data, or the new data whole. A file of ours the new layout lacks (the offsets of
    an earlier documents layout) is removed; any other file is left alone."""
    (out_dir / "meta.json").unlink(missing_ok=True)
    for name in OWNED:
        if not (tmp / name).exists():
            (out_dir / name).unlink(missing_ok=True)
    for name in os.listdir(tmp):
        if name != "meta.json":
            os.replace(tmp / name, out_dir / name)
    fsync_dir(out_dir)  # the data is on disk under its names before the meta.json that vouches for it
    os.replace(tmp / "meta.json", out_dir / "meta.json")
    fsync_dir(out_dir)


@dataclass
class PreparedData:
    """A prepared folder opened for training: the splits are read-only memmaps, so nothing is loaded up front."""

    train: np.ndarray
    val: np.ndarray
    meta: dict
    tokenizer: Tokenizer
    path: Path


def load_prepared(path: str | Path) -> PreparedData:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise LmforgeError(f"{path} is not prepared data (no meta.json): run `lmforge data prepare` on a text file")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        counts = {split: int(meta[f"n_{split}_tokens"]) for split in ("train", "val")}
        tokenizer_file = path / meta["tokenizer"]
    except (ValueError, KeyError, TypeError) as e:
        raise LmforgeError(f"{meta_file} is damaged ({type(e).__name__}: {e}): prepare the data again") from None
    if meta.get("format") != FORMAT:
        raise LmforgeError(
            f"{path} has data format {meta.get('format')}, this lmforge reads {FORMAT}: prepare it again"
        )
    splits = {}
    for split, n in counts.items():
        file = path / f"{split}.bin"
        if not file.is_file():
            raise LmforgeError(f"{file} is missing: prepare the data again")
        size = file.stat().st_size
        if size != n * dtype.itemsize:
            raise LmforgeError(
                f"{file} has {size} bytes but meta.json says {n} {dtype.name} tokens ({n * dtype.itemsize} bytes): "
                "prepare the data again"
            )
        splits[split] = np.memmap(file, dtype=dtype, mode="r") if n else np.empty(0, dtype=dtype)  # mmap needs bytes
    tokenizer = Tokenizer.load(tokenizer_file)
    if tokenizer.vocab_size != meta.get("vocab_size"):
        raise LmforgeError(
            f"{tokenizer_file} has {tokenizer.vocab_size} tokens but meta.json says {meta.get('vocab_size')}: "
            "prepare the data again"
        )
    return PreparedData(splits["train"], splits["val"], meta, tokenizer, path)
