"""Text generation from a trained model: prompt in, text out, with stop strings and streaming."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmforge.errors import LmforgeError
from lmforge.generation.decoding import stream
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
    **_,
) -> None:
    """Rejects sampling settings that have no meaning, naming the flag."""
    problems = [
        (max_new_tokens < 1, f"--max-new-tokens must be at least 1, not {max_new_tokens}"),
        (temperature < 0, f"--temperature must be >= 0 (0 = greedy), not {temperature}"),
        (top_k is not None and top_k < 1, f"--top-k must be at least 1, not {top_k}"),
        (top_p is not None and not 0 < top_p <= 1, f"--top-p must be in (0, 1], not {top_p}"),
        (repetition_penalty <= 0, f"--repetition-penalty must be positive (1 = off), not {repetition_penalty}"),
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
    top_p, repetition_penalty, greedy and seed (see lmforge.models.decoding.stream).
    """
    check_sampling(max_new_tokens, **sampling)
    device = next(model.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, prompt, model.cfg.max_seq_len)], device=device)
    stop = [s for s in stop if s]
    new: list[int] = []
    text, shown = "", 0
    for token in stream(model, ids, max_new_tokens, eos_id=tokenizer.eos_id, **sampling):
        if int(token[0]) == tokenizer.eos_id:
            break
        new.append(int(token[0]))
        text = tokenizer.decode(new)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=None)
        if cut is not None:
            text = text[:cut]
            break
        ready = len(text) - _held_back(text, stop)
        if on_text is not None and ready > shown and not text[:ready].endswith("\ufffd"):
            on_text(text[shown:ready])
            shown = ready
    if on_text is not None and len(text) > shown:
        on_text(text[shown:])
    return text


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of text that could still grow into a stop string (not shown yet)."""
    return max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
