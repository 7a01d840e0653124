"""Incremental detokenization: text out as token ids come in, at a cost per token that does not grow with the text."""

from __future__ import annotations

from lmforge.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns token ids, one at a time, into the pieces of tokenizer.decode(all ids), each as soon as it is final.

    Only a window is decoded: the tokens not yet shown, after those of the last piece shown, which give the context a
    token decodes in (a WordPiece word or a SentencePiece piece opens a text without its space). The new piece is the
    window's text past the context's. A text ending in U+FFFD waits for the next token: a byte-level BPE splits
    characters into bytes, and the bytes so far may be the start of one (the technique of vLLM and HF's DecodeStream).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.window: list[int] = []  # the last piece's tokens (the context), then the tokens not shown yet
        self.context = 0  # tokens of the window that belong to the last piece
        self.shown = 0  # characters of the context's text

    def add(self, token_id: int) -> str:
        """The text that token_id makes final, often "" (an incomplete character, or a token without text)."""
        self.window.append(int(token_id))
        text = self.tokenizer.decode(self.window)
        if len(text) <= self.shown or text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """The text still held back, as decode gives it (an incomplete character as U+FFFD), once no token follows."""
        return self._advance(self.tokenizer.decode(self.window)) if len(self.window) > self.context else ""

    def _advance(self, text: str) -> str:
        """text[shown:] (text is the window's), after which the tokens not shown yet become the context."""
        piece = text[self.shown :]
        del self.window[: self.context]
        self.context = len(self.window)
        self.shown = len(self.tokenizer.decode(self.window))
        return piece
