"""Text generation from a trained model: prompt in, text out, with stop strings and streaming."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from lmforge.errors import LmforgeError
from lmforge.generation.beam import beam_search
from lmforge.generation.decoding import stream
from lmforge.generation.detokenize import IncrementalDetokenizer
from lmforge.tokenizer import Tokenizer


def encode_prompt(tokenizer: Tokenizer, prompt: str, context: int) -> list[int]:
    """Token ids of the prompt, checked against the model's context; an empty prompt starts from a separator."""
    ids = tokenizer.encode(prompt)
    if not ids:
        start = tokenizer.eos_id if tokenizer.eos_id is not None else next(iter(tokenizer.encode("\n")), None)
        if start is None:
            raise LmforgeError("the prompt is empty and the tokenizer has no start token: give --prompt some text")
        ids = [start]
    if len(ids) >= context:
        raise LmforgeError(
            f"the prompt is {len(ids)} tokens but the model's context is {context}: shorten the prompt "
            f"to fewer than {context} tokens"
        )
    return ids


def check_sampling(
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    **_,
) -> None:
    """Rejects sampling and search settings that have no meaning, NaN and infinities included, naming the flag."""
    problems = [
        (max_new_tokens < 1, f"--max-new-tokens must be at least 1, not {max_new_tokens}"),
        (not 0 <= temperature < math.inf, f"--temperature must be finite and >= 0 (0 = greedy), not {temperature}"),
        (top_k is not None and top_k < 1, f"--top-k must be at least 1, not {top_k}"),
        (top_p is not None and not 0 < top_p <= 1, f"--top-p must be in (0, 1], not {top_p}"),
        (
            not 0 < repetition_penalty < math.inf,
            f"--repetition-penalty must be finite and > 0 (1 = off), not {repetition_penalty}",
        ),
        (num_beams < 1, f"--num-beams must be at least 1 (1 = no beam search), not {num_beams}"),
        (not math.isfinite(length_penalty), f"--length-penalty must be a finite number, not {length_penalty}"),
        (no_repeat_ngram_size < 0, f"--no-repeat-ngram-size must be >= 0 (0 = off), not {no_repeat_ngram_size}"),
    ]
    for bad, message in problems:
        if bad:
            raise LmforgeError(message)


def generate_text(
    model,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    stop: Sequence[str] = (),
    on_text: Callable[[str], None] | None = None,
    **sampling,
) -> str:
    """The text generated after prompt (prompt excluded), cut before the first stop string.

    on_text receives each newly decodable piece as it is produced (streaming); sampling takes temperature, top_k,
    top_p, repetition_penalty, greedy and seed (see lmforge.generation.decoding.stream). With num_beams > 1 the
    text is the best hypothesis of a beam search (length_penalty, no_repeat_ngram_size; see
    lmforge.generation.beam), within the model's context, and sampling settings do not apply.
    """
    check_sampling(max_new_tokens, **sampling)
    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, prompt, model.cfg.max_seq_len)], device=device)
    detokenizer = IncrementalDetokenizer(tokenizer)
    text = TextUntilStop([s for s in stop if s], on_text)
    for token in _tokens(model, ids, max_new_tokens, tokenizer.eos_id, **sampling):
        if token == tokenizer.eos_id or text.add(detokenizer.add(token)):
            break
    text.add(detokenizer.flush())
    return text.close()


def _tokens(
    model, ids: torch.Tensor, max_new_tokens: int, eos_id: int | None, num_beams: int = 1, length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0, **sampling,
) -> Iterator[int]:  # fmt: skip
    """The new token ids of one prompt: streamed as decoded, or the best beam once the search ends. A model without
    a KV cache (XLNet) decodes without one, and does not beam-search."""
    if num_beams == 1:
        yield from (int(token[0]) for token in stream(model, ids, max_new_tokens, eos_id=eos_id, **sampling))
        return
    if not hasattr(model, "new_cache"):
        raise LmforgeError(f"--num-beams searches with a GPT's KV cache; a {model.family} model generates with 1")
    room = min(max_new_tokens, model.cfg.max_seq_len - ids.size(1))
    best = beam_search(model, ids, num_beams, room, length_penalty, False, no_repeat_ngram_size, eos_id, eos_id)
    yield from best[0, ids.size(1) :].tolist()


class TextUntilStop:
    """Generated text as its pieces arrive, cut before the first stop string, and streamed to on_text (when given)
    up to where a stop string could still begin.

    A new match can only begin in the last (longest stop - 1) characters before a piece, so each piece costs its
    length and the stop strings', however long the text is."""

    def __init__(self, stop: Sequence[str], on_text: Callable[[str], None] | None = None):
        self.stop, self.on_text = stop, on_text
        self.keep = max(map(len, stop), default=1) - 1
        self.shown: list[str] = []  # the pieces passed on
        self.held = ""  # the text after them
        self.tail = ""  # the text's last `keep` characters
        self.stopped = False

    def add(self, piece: str) -> bool:
        """Appends piece, unless a stop string came before; whether one has now."""
        if self.stopped or not piece:
            return self.stopped
        region = self.tail + piece
        cut = min((i for i in (region.find(s) for s in self.stop) if i >= 0), default=None)
        if cut is not None:  # the match begins in held text: the tail before it was a stop string's start
            self.held = (self.held + piece)[: len(self.held) + cut - len(self.tail)]
            self.stopped = True
            return True
        self.held += piece
        self.tail = region[max(len(region) - self.keep, 0) :]
        ready = len(self.held) - _held_back(self.held, self.stop)
        if ready > 0 and not self.held.endswith("\ufffd", 0, ready):
            self._show(ready)
        return False

    def close(self) -> str:
        """Passes on what was held back and returns the whole text."""
        if self.held:
            self._show(len(self.held))
        return "".join(self.shown)

    def _show(self, n: int) -> None:
        piece, self.held = self.held[:n], self.held[n:]
        self.shown.append(piece)
        if self.on_text is not None:
            self.on_text(piece)


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of text that could still grow into a stop string (not shown yet)."""
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
