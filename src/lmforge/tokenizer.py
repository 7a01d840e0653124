"""Character-level, byte-level BPE, WordPiece and Unigram tokenizers over Hugging Face `tokenizers`, one
tokenizer.json each.

char and bpe are lossless: decode(encode(text)) == text (for a char tokenizer, when every character was seen in
training). WordPiece is BERT's: it normalizes (lower-casing, accents) and decodes words joined by spaces. Unigram is
SentencePiece's (T5, ALBERT, XLNet): NFKC-normalized words marked with a leading ▁.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers

from lmforge.errors import LmforgeError

EOS = "<|endoftext|>"
UNK = "<unk>"
# the tokenizers model type -> our kind
KINDS = {"WordLevel": "char", "BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram"}
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # BERT's
# RoBERTa's, in its id order; <mask> swallows the space before it, so "a <mask>" predicts the word with its space
ENCODER_BPE_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, special=True))
# An encoder's special tokens by role: BERT's name first, then XLNet's (whose vocabulary also has <s> and </s>), then
# RoBERTa's (a byte-level BPE has <s> where BERT has [CLS]). A role the tokenizer lacks has id None.
ROLES = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", UNK),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "sep": ("[SEP]", "<sep>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}
SURROGATES = re.compile("[\ud800-\udfff]")  # what undecodable bytes become under errors="surrogateescape"
# far above any real vocabulary (GPT-2 has 50257 tokens); at 10**9 the Rust trainer aborts the process, out of memory
MAX_VOCAB_SIZE = 1_000_000


def min_vocab_size(kind: str, encoder: bool = False) -> int:
    """The smallest vocab_size a tokenizer of this kind ("bpe" or "wordpiece") is trained to: a byte-level BPE holds
    all 256 bytes and its special tokens (RoBERTa's five for an encoder, else <|endoftext|>); a WordPiece its five
    special tokens and at least one character (its alphabet is the data's)."""
    if kind == "bpe":
        return 256 + len(ENCODER_BPE_SPECIALS if encoder else (EOS,))
    if kind == "wordpiece":
        return len(WORDPIECE_SPECIALS) + 1
    if kind == "unigram":
        return len(unigram_specials(encoder)) + 1
    raise ValueError(f"only bpe, wordpiece and unigram tokenizers are trained to a vocab_size, not {kind!r}")


def unigram_specials(encoder: bool) -> tuple:
    """A Unigram's special tokens: an encoder's as a BPE's, or <|endoftext|> and the unknown token it needs."""
    return ENCODER_BPE_SPECIALS if encoder else (EOS, UNK)


def check_vocab_size(kind: str, vocab_size: int, least: int) -> None:
    """Refuses, before any training, a size the trainer cannot honour: below `least` it returns a larger vocabulary
    than asked for, and a huge one aborts the whole process."""
    if vocab_size < least:
        name = (
            "byte-level BPE (256 bytes + special tokens)"
            if kind == "bpe"
            else "WordPiece (special tokens + 1 character)"
        )
        raise LmforgeError(f"vocab_size {vocab_size} is too small for {name}: give at least {least}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise LmforgeError(
            f"vocab_size {vocab_size} is too large: give at most {MAX_VOCAB_SIZE} (GPT-2 has 50257 tokens, BERT 30522)"
        )


class Tokenizer:
    """Text <-> token ids; `backend` is the `tokenizers.Tokenizer` doing the work (its model type gives the kind).

    max_length, when set, is the input length (special tokens included) the model's makers cut texts to, such as
    sentence-transformers' max_seq_length; tokenizer.json keeps it as its truncation length. encode never truncates.
    """

    def __init__(self, backend: tokenizers.Tokenizer, max_length: int | None = None):
        model = type(backend.model).__name__
        if model not in KINDS:
            raise LmforgeError(
                f"a {model} tokenizer is not supported; lmforge reads WordLevel (char), BPE, WordPiece and Unigram ones"
            )
        backend.no_truncation()  # a Hugging Face tokenizer.json may carry both; our callers place every token
        backend.no_padding()
        self.backend = backend
        self.kind: str = KINDS[model]
        self.max_length = max_length
        self._by_code_point, self._table_vocab = self._char_table(), self.vocab_size
        self._known_size = self._table_vocab  # decode's range check: vocabularies only grow

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
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        progress: bool = False,
        special_tokens: Sequence[str | AddedToken] = (EOS,),
    ) -> Tokenizer:
        """GPT-2 style byte-level BPE: all 256 bytes are in the alphabet, so any Unicode text round-trips.

        The special tokens take the first ids; an encoder passes ENCODER_BPE_SPECIALS (RoBERTa's).
        """
        check_vocab_size("bpe", vocab_size, 256 + len(special_tokens))
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
        _train(backend, texts, trainer)
        return cls(backend)

    @classmethod
    def train_wordpiece(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        lowercase: bool = True,
        strip_accents: bool = True,
        progress: bool = False,
    ) -> Tokenizer:
        """BERT's WordPiece: normalize (optionally lower-case and strip accents), split on whitespace and punctuation
        with every CJK character a word of its own (Chinese has no spaces), then ##-continued subwords."""
        check_vocab_size("wordpiece", vocab_size, min_vocab_size("wordpiece"))
        backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIALS), show_progress=progress
        )
        _train(backend, texts, trainer)
        return cls(backend)

    @classmethod
    def train_unigram(
        cls, texts: Iterable[str], vocab_size: int, progress: bool = False, encoder: bool = False
    ) -> Tokenizer:
        """SentencePiece's Unigram language model (Kudo, 2018), the subwords of T5 and of most translation models;
        text is NFKC-normalized and split on spaces, each word marked with a leading ▁ so decoding restores them."""
        specials = unigram_specials(encoder)
        check_vocab_size("unigram", vocab_size, len(specials) + 1)
        backend = tokenizers.Tokenizer(models.Unigram())
        backend.normalizer = normalizers.NFKC()
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=list(specials), unk_token=UNK, show_progress=progress
        )
        _train(backend, texts, trainer)
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
        max_length = (backend.truncation or {}).get("max_length")
        try:
            return cls(backend, max_length)
        except LmforgeError as e:
            raise LmforgeError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        """Writes a temporary file next to `path`, then renames it, so a crash never leaves half a tokenizer."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if self.max_length is not None:
            self.backend.enable_truncation(self.max_length)
        try:
            self.backend.save(str(tmp))
            os.replace(tmp, path)
        finally:
            self.backend.no_truncation()
            tmp.unlink(missing_ok=True)

    def encode(self, text: str | bytes) -> list[int]:
        if self._fast():
            return self._lookup(_unicode(text)).tolist()
        return self.backend.encode(_unicode(text), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes the texts in parallel on all cores (the Rust side releases the GIL); a plain char tokenizer by
        table lookup instead, some 50x faster."""
        if self._fast():
            return [self._lookup(_unicode(t)).tolist() for t in texts]
        return [e.ids for e in self.backend.encode_batch([_unicode(t) for t in texts], add_special_tokens=False)]

    def framed(self, texts: list[str], limit: int) -> list[list[int]]:
        """Texts' token ids as a model reads them: cut to limit tokens, [CLS] and [SEP] included when the tokenizer
        has both."""
        encoded, cls, sep = self.encode_batch(texts), self.cls_id, self.sep_id
        if cls is not None and sep is not None:
            return [[cls, *x[: limit - 2], sep] for x in encoded]
        return [x[:limit] for x in encoded]

    def decode(self, ids: Iterable[int]) -> str:
        """Keeps special tokens, so an <|endoftext|> in the text comes back as written."""
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self._known_size):
            # read again only here: tokens may have been added, and reading costs 0.4 ms on GPT-2's vocabulary
            # (tokenizers builds all of it), more than decoding a streamed token
            self._known_size = self.vocab_size
            bad = next((i for i in ids if not 0 <= i < self._known_size), None)
            if bad is not None:
                raise LmforgeError(
                    f"token id {bad} is out of range for this tokenizer (ids 0 to {self._known_size - 1})"
                )
        return self.backend.decode(ids, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        """The id of <|endoftext|>, which separates documents; None for a char tokenizer."""
        return self.backend.token_to_id(EOS)

    def special_id(self, role: str) -> int | None:
        """The id of an encoder's special token by role (pad, unk, cls, sep, mask; see ROLES), or None."""
        return next((i for name in ROLES[role] if (i := self.backend.token_to_id(name)) is not None), None)

    @property
    def pad_id(self) -> int | None:
        return self.special_id("pad")

    @property
    def unk_id(self) -> int | None:
        return self.special_id("unk")

    @property
    def cls_id(self) -> int | None:
        return self.special_id("cls")

    @property
    def sep_id(self) -> int | None:
        return self.special_id("sep")

    @property
    def mask_id(self) -> int | None:
        return self.special_id("mask")

    @property
    def special_ids(self) -> list[int]:
        """The ids of every special token (the encoder roles and <|endoftext|>) this tokenizer has."""
        ids = {self.special_id(role) for role in ROLES} | {self.eos_id}
        return sorted(i for i in ids if i is not None)

    def continues_word(self) -> list[bool]:
        """For each id, whether its token continues the word before it: a WordPiece ##piece, or a byte-level BPE
        (SentencePiece) piece without the leading Ġ (▁) that starts a word. Whole-word masking keeps such pieces with
        their word.
        """
        specials, out = set(self.special_ids), [False] * self.vocab_size
        starts = {"bpe": "Ġ", "unigram": "▁"}.get(self.kind)
        for token, i in self.backend.get_vocab(with_added_tokens=True).items():
            if self.kind == "wordpiece":
                out[i] = token.startswith("##")
            elif starts is not None:
                out[i] = not token.startswith(starts) and i not in specials
        return out

    def _char_table(self) -> np.ndarray | None:
        """Ids indexed by code point, unknown ones <unk>, for a char tokenizer as train_char builds it (one piece
        per code point, no normalizer, no added tokens); None for any other."""
        b = self.backend
        vocab = b.get_vocab()
        if self.kind != "char" or b.normalizer is not None or b.get_added_tokens_decoder() or UNK not in vocab:
            return None
        split = json.loads(b.pre_tokenizer.__getstate__()) if b.pre_tokenizer is not None else {}
        if split.get("pattern") != {"Regex": r"[\s\S]"} or split.get("behavior") != "Isolated" or split.get("invert"):
            return None
        chars = {c: i for c, i in vocab.items() if len(c) == 1}
        table = np.full(max(map(ord, chars), default=0) + 2, vocab[UNK], dtype=np.int64)  # last slot: beyond
        table[[ord(c) for c in chars]] = list(chars.values())
        return table

    def _fast(self) -> bool:
        """Whether the table still applies: tokens added since (entity markers, say) send text back to the backend."""
        return self._by_code_point is not None and self.vocab_size == self._table_vocab

    def _lookup(self, text: str) -> np.ndarray:
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return self._by_code_point[np.minimum(code_points, len(self._by_code_point) - 1)]

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _train(backend: tokenizers.Tokenizer, texts: Iterable[str], trainer: trainers.Trainer) -> None:
    """Trains in a daemon thread while this one waits in short joins: Ctrl-C (KeyboardInterrupt, raised only in the
    main thread, and only between Python instructions) would otherwise wait, up to minutes, for the Rust trainer to
    return. An interrupted trainer is left to finish or die with the process."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            backend.train_from_iterator(texts, trainer)
        except BaseException as e:  # raised again below, in the caller's thread
            failure.append(e)

    thread = threading.Thread(target=run, name="tokenizer-training", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if failure:
        raise failure[0]


def _unicode(text: str | bytes) -> str:
    """Text UTF-8 can carry: invalid bytes and lone surrogates (from undecodable bytes) become U+FFFD, as in
    bytes.decode(errors="replace"); the Rust side refuses them otherwise."""
    if isinstance(text, bytes):
        return text.decode("utf-8", errors="replace")
    return SURROGATES.sub("\ufffd", text)
