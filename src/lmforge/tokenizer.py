"""Character-level and byte-level BPE tokenizers over Hugging Face `tokenizers`, stored as one tokenizer.json.

Both kinds are lossless: decode(encode(text)) == text (for a char tokenizer, when every character was seen in training).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from lmforge.errors import LmforgeError

EOS = "<|endoftext|>"
UNK = "<unk>"
KINDS = {"WordLevel": "char", "BPE": "bpe"}  # the tokenizers model type -> our kind
SURROGATES = re.compile("[\ud800-\udfff]")  # what undecodable bytes become under errors="surrogateescape"


class Tokenizer:
    """Text <-> token ids; `backend` is the `tokenizers.Tokenizer` doing the work (its model type gives the kind)."""

    def __init__(self, backend: tokenizers.Tokenizer):
        model = type(backend.model).__name__
        if model not in KINDS:
            raise LmforgeError(f"a {model} tokenizer is not supported; lmforge reads WordLevel (char) and BPE ones")
        self.backend = backend
        self.kind: str = KINDS[model]

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> Tokenizer:
        """Every distinct character, sorted (so ids match nanoGPT's shakespeare_char), then one unknown token."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        vocab = {c: i for i, c in enumerate(sorted(chars))}
        vocab[UNK] = len(vocab)
        backend = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per char
        backend.decoder = decoders.Fuse()  # join without the spaces WordLevel would put between words
        return cls(backend)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, progress: bool = False) -> Tokenizer:
        """GPT-2 style byte-level BPE: all 256 bytes are in the alphabet, so any Unicode text round-trips."""
        if vocab_size < 257:
            raise LmforgeError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least 257 (256 bytes + {EOS})"
            )
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
        backend.train_from_iterator(texts, trainer)
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise LmforgeError(f"tokenizer file {path} not found: give the path of a tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for bad JSON or an unknown layout
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LmforgeError(f"{path} is not a valid tokenizer.json ({reason}); save one with lmforge") from None
        try:
            return cls(backend)
        except LmforgeError as e:
            raise LmforgeError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        """Writes a temporary file next to `path`, then renames it, so a crash never leaves half a tokenizer."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.backend.save(str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def encode(self, text: str | bytes) -> list[int]:
        return self.backend.encode(_unicode(text), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes the texts in parallel on all cores (the Rust side releases the GIL)."""
        return [e.ids for e in self.backend.encode_batch([_unicode(t) for t in texts], add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Keeps special tokens, so an <|endoftext|> in the text comes back as written."""
        ids = [int(i) for i in ids]
        if ids and not (min(ids) >= 0 and max(ids) < self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise LmforgeError(f"token id {bad} is out of range for this tokenizer (ids 0 to {self.vocab_size - 1})")
        return self.backend.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        """The id of <|endoftext|>, which separates documents; None for a char tokenizer."""
        return self.backend.token_to_id(EOS)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _unicode(text: str | bytes) -> str:
    """Text UTF-8 can carry: invalid bytes and lone surrogates (from undecodable bytes) become U+FFFD, as in
    bytes.decode(errors="replace"); the Rust side refuses them otherwise."""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    return SURROGATES.sub("\ufffd", text)
