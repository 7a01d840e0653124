"""Incremental detokenization: text out as token ids come in, at a cost per token that does not grow with the text."""

from __future__ import annotations

from lmforge.tokenizer import Tokenizer

KEEP = 4  # tokens a window is cut back to once it holds twice as many


class IncrementalDetokenizer:
    """Turns token ids, one at a time, into the pieces of tokenizer.decode(all ids), each as soon as it is final.

    Each step decodes a window of recent tokens and returns its text past what was shown, but for a last U+FFFD: a
    byte-level BPE splits characters into bytes, and the bytes so far may begin one. Only that last character can
    still change (the byte-level decoder reads bytes left to right; the others render each token on its own). A
    window of 2 * KEEP tokens is cut to its last KEEP where their text ends as the window's does: a window's first
    token decodes differently (no space before a word, a ## kept, up to 3 UTF-8 continuation bytes as U+FFFD). So a
    token costs one or two decodes of at most 2 * KEEP tokens (more only within a run of ## pieces).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.window: list[int] = []
        self.shown = 0  # characters of the window's text returned so far

    def add(self, token_id: int) -> str:
        """The text that token_id makes final, often "" (an unfinished character, a token without text)."""
        self.window.append(int(token_id))
        text = self.tokenizer.decode(self.window)
        end = len(text) - text.endswith("\ufffd")
        piece, self.shown = text[self.shown : end], end
        if len(self.window) >= 2 * KEEP:
            self._shorten(text)
        return piece

    def flush(self) -> str:
        """What is still held back, as decode gives it (an unfinished character as U+FFFD), once no token follows."""
        text = self.tokenizer.decode(self.window)
        piece, self.shown = text[self.shown :], len(text)
        return piece

    def _shorten(self, text: str) -> None:
        """Keeps the last KEEP tokens if their text, past a first token that may decode differently, ends text."""
        kept = self.window[-KEEP:]
        short = self.tokenizer.decode(kept)
        shown = self.shown - (len(text) - len(short))
        # bytes decode as in text from short's first character that is not U+FFFD, and from its 4th at the latest
        # (an unfinished character needs at most 3 more bytes; each stray one is a U+FFFD of its own)
        start = min(next((i for i, c in enumerate(short) if c != "\ufffd"), len(short)), 3)
        if shown >= start and text.endswith(short[start:]):
            self.window, self.shown = kept, shown
