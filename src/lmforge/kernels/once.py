"""Questions about this machine's torch (does oneDNN run int8 products? bf16 ones?) asked once per process."""

from __future__ import annotations

import functools
from collections.abc import Callable


def asked_once(question: Callable[[], bool]) -> Callable[[], bool]:
    """question() at the first call, its answer after. Unlike functools.cache, torch.compile reads the answer as a
    constant rather than tracing into the question (whose calls into torch.backends it cannot trace)."""
    answer: list[bool] = []

    @functools.wraps(question)
    def ask() -> bool:
        if not answer:
            answer.append(question())
        return answer[0]

    return ask
