"""Hugging Face tokenizer files: read tokenizer.json, vocab.txt (WordPiece) or vocab.json + merges.txt (byte-level
BPE) into our Tokenizer, and write tokenizer.json + tokenizer_config.json that transformers' AutoTokenizer reads."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, processors
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

from lmforge.errors import LmforgeError
from lmforge.tokenizer import EOS, ROLES, Tokenizer


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{path} is not readable JSON ({e})") from None
    return raw if isinstance(raw, dict) else {}


def load_hf_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of an HF model directory; max_length is sentence-transformers' max_seq_length when present."""
    options = _json(path / "tokenizer_config.json")
    if (path / "tokenizer.json").is_file():
        backend = Tokenizer.load(path / "tokenizer.json").backend
    elif (path / "vocab.txt").is_file():
        backend = BertWordPieceTokenizer(
            str(path / "vocab.txt"), lowercase=options.get("do_lower_case", True),
            strip_accents=options.get("strip_accents"),
            handle_chinese_chars=options.get("tokenize_chinese_chars", True),
        )._tokenizer  # fmt: skip
    elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        bpe = ByteLevelBPETokenizer(
            str(path / "vocab.json"), str(path / "merges.txt"), add_prefix_space=options.get("add_prefix_space", False)
        )
        names = {EOS, *(name for role in ROLES.values() for name in role)}
        specials = [name for name in sorted(names) if bpe.token_to_id(name) is not None]
        bpe.add_special_tokens([AddedToken(s, lstrip=s == "<mask>", special=True) for s in specials])
        if {"<s>", "</s>"} <= set(specials):  # RoBERTa's <s> ... </s>, as its HF tokenizer adds them
            bpe.post_processor = processors.RobertaProcessing(
                ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")), add_prefix_space=False
            )
        backend = bpe._tokenizer
    else:
        raise LmforgeError(
            f"{path} has no tokenizer lmforge reads: give tokenizer.json, vocab.txt (WordPiece) or vocab.json + "
            "merges.txt (byte-level BPE)"
        )
    try:
        tokenizer = Tokenizer(backend)
    except LmforgeError as e:
        raise LmforgeError(f"{path}: {e}") from None
    tokenizer.max_length = _json(path / "sentence_bert_config.json").get("max_seq_length")
    return tokenizer


def write_hf_tokenizer(
    tokenizer: Tokenizer, out: Path, max_length: int, token_type_ids: bool = False, cls_last: bool = False
) -> None:
    """tokenizer.json (an encoder's gets [CLS] ... [SEP] added by HF, as lmforge adds them) and tokenizer_config.json
    naming the special tokens by role.

    token_type_ids is for a model with two segment types (BERT, ALBERT): transformers' generic fast tokenizer returns
    no segment ids unless its config names them, and without them the model reads a pair's second text (a QA context,
    an NLI hypothesis) as a first one. cls_last is XLNet's layout, A <sep> B <sep> <cls> (segments 0, 1 and 2),
    padded on the left as XLNet's tokenizer pads."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    if backend.post_processor is None and cls is not None and sep is not None:
        c, s = backend.id_to_token(cls), backend.id_to_token(sep)
        single, pair = f"{c} $A {s}", f"{c} $A {s} $B:1 {s}:1"
        if cls_last:
            single, pair = f"$A {s} {c}:2", f"$A {s} $B:1 {s}:1 {c}:2"
        backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(c, cls), (s, sep)]
        )
    Tokenizer(backend, tokenizer.max_length).save(out / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": tokenizer.max_length or max_length}
    if cls_last:
        config["padding_side"] = "left"
    for role in ROLES:
        if (i := tokenizer.special_id(role)) is not None:
            config[f"{role}_token"] = backend.id_to_token(i)
    if tokenizer.eos_id is not None:
        config |= {"eos_token": EOS, "bos_token": EOS}
    if token_type_ids:
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
