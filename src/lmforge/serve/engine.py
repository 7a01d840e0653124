"""Continuous batching: every live request decodes in one shared forward pass per step; new requests join at the
next step (their prompts prefilled together into free KV-cache rows) and a finished or abandoned one leaves at once.

Each request has a row of a SlotCache, with a length of its own, so requests of different lengths share a step
without padding or recomputation. The engine runs in a thread of its own (a forward pass holds no Python lock);
callers submit() requests from any thread and receive Events through the callback they gave.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmforge.generation.decoding import process_logits
from lmforge.generation.detokenize import IncrementalDetokenizer
from lmforge.generation.text import TextUntilStop
from lmforge.nn.cache import SlotCache

MIN_TEMPERATURE = 1e-4  # below it, sampling is greedy decoding


class QueueFull(Exception):
    """More requests wait than the engine queues: the caller answers 503 and asks the client to retry."""


@dataclass
class Sampling:
    """One request's decoding controls, as the OpenAI API names them (checked by the API layer)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # alternatives per token to report (0: the chosen token's log-probability only)


@dataclass
class Event:
    """New text of a request (possibly empty), its tokens, and once it ends, why: "stop" or "length"."""

    text: str
    tokens: list[int]
    logprobs: list[dict] = field(default_factory=list)  # per token: token, logprob, top (token -> logprob)
    finish_reason: str | None = None  # "error" when the model failed on it: `error` says how
    error: str | None = None


class Request:
    """A prompt being completed: what the engine needs to decode it and to report back."""

    def __init__(self, prompt: list[int], sampling: Sampling, on_event: Callable[[Event], None], tokenizer):
        self.prompt, self.sampling, self.on_event = prompt, sampling, on_event
        self.tokens: list[int] = []
        self.counts: collections.Counter[int] = collections.Counter()
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.pieces: list[str] = []
        self.text = TextUntilStop([s for s in sampling.stop if s], self.pieces.append)
        self.generator: torch.Generator | None = None  # on the model's device, made at admission (seeded requests)
        self.cancelled = False  # set by the caller (a client that went away): the request leaves at the next step
        self.submitted = time.perf_counter()
        self.first_token_s: float | None = None


class Engine:
    """Decodes submitted requests with a causal LM (a GPT), up to max_batch at a time and max_queue more waiting."""

    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        cfg, weight = model.cfg, model.tok_emb.weight
        d_head = cfg.d_model // cfg.n_head
        self.cache = SlotCache(cfg.n_layer, max_batch, cfg.n_head, cfg.max_seq_len, d_head, weight.dtype, weight.device)
        self.device = weight.device
        self.live: list[Request] = []  # live[i] decodes in cache row i
        self.waiting: collections.deque[Request] = collections.deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)

    def start(self) -> Engine:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join()

    def submit(self, request: Request) -> None:
        with self.wake:
            if any(r.cancelled for r in self.waiting):  # a client gone while waiting holds no place
                self.waiting = collections.deque(r for r in self.waiting if not r.cancelled)
            if len(self.waiting) >= self.max_queue + self.max_batch - len(self.live):  # rows free now take some
                raise QueueFull(f"{len(self.waiting)} requests are waiting, the most this server queues")
            self.waiting.append(request)
            self.wake.notify()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wake:
                    while not self.stopping and not self.waiting and not self.live:
                        self.wake.wait()
                    if self.stopping:
                        return
                    admitted = []
                    while self.waiting and len(self.live) + len(admitted) < self.max_batch:
                        admitted.append(self.waiting.popleft())
                admitted = [r for r in admitted if not r.cancelled]
                try:
                    if admitted:
                        self._prefill(admitted)
                    if self.live:
                        self._decode()
                except Exception as e:  # a failed step ends its requests, never the server
                    self._fail([*self.live, *(r for r in admitted if r not in self.live)], e)

    def _fail(self, requests: list[Request], error: Exception) -> None:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"lmforge serve: a decoding step failed ({type(error).__name__}: {message})", file=sys.stderr)
        for request in requests:
            request.on_event(Event("", [], [], "error", f"the model failed on this request: {message}"))
        for row in range(len(self.live)):
            self.cache.lengths[row] = 0
        self.live.clear()

    def _prefill(self, requests: list[Request]) -> None:
        """The prompts of the requests admitted at this step, in one forward pass, right-padded to the longest: each
        takes the next free row and keeps as many positions as its prompt has. A padded key is never read: attention
        is causal, later steps see only the row's own length, and the row's next token overwrites it."""
        first, lengths = len(self.live), [len(r.prompt) for r in requests]
        width = max(lengths)
        ids = torch.tensor([r.prompt + [0] * (width - len(r.prompt)) for r in requests], device=self.device)
        for request in requests:  # (a free row's length is 0: leaving and failing reset it)
            if request.sampling.seed is not None:
                request.generator = torch.Generator(device=self.device).manual_seed(request.sampling.seed)
        hidden, _ = self.model.hidden(ids, cache=self.cache.rows(len(requests), first=first))
        for row, length in enumerate(lengths, start=first):
            self.cache.lengths[row] = length
        self.live.extend(requests)
        last = hidden[torch.arange(len(requests)), torch.tensor(lengths, device=self.device) - 1]
        self._advance(requests, last)

    def _decode(self) -> None:
        n = len(self.live)
        ids = torch.tensor([[r.tokens[-1]] for r in self.live], device=self.device)
        hidden, _ = self.model.hidden(ids, cache=self.cache.rows(n))
        self._advance(self.live, hidden[:, -1])
        self.steps += 1

    def _advance(self, requests: list[Request], hidden: torch.Tensor) -> None:
        """Picks each request's next token from its row of hidden (B, d_model), reports it, and lets finished requests
        go (the last live row moves into a freed one, so the live rows stay 0..n-1)."""
        done = []
        for request, (token, logits) in zip(requests, self._heads(requests, hidden), strict=True):
            if request.cancelled:
                done.append(request)
                continue
            event = self._next(request, logits, token)
            request.on_event(event)
            if event.finish_reason is not None:
                done.append(request)
        for request in done:
            row, last = self.live.index(request), len(self.live) - 1
            if row != last:
                self.cache.move(last, row)
            self.cache.lengths[last] = 0
            self.live[row] = self.live[last]
            self.live.pop()

    def _heads(self, requests: list[Request], hidden: torch.Tensor) -> list[tuple[int | None, torch.Tensor | None]]:
        """Per request, (token, None) where plain greedy decoding needs only the largest logit's index, read by the
        LM head's int8 screen when it has one (lmforge.kernels.argmax: fp32's token without every fp32 logit), else
        (None, its fp32 logits)."""
        head = self.model.lm_head
        greedy = [i for i, r in enumerate(requests) if hasattr(head, "argmax") and _plain_greedy(r)]
        others = sorted(set(range(len(requests))) - set(greedy))
        out: list[tuple[int | None, torch.Tensor | None]] = [(None, None)] * len(requests)
        if greedy:
            for i, token in zip(greedy, head.argmax(hidden[greedy]).tolist(), strict=True):
                out[i] = (token, None)
        if others:
            for i, logits in zip(others, head(hidden[others]).float(), strict=True):
                out[i] = (None, logits)
        return out

    def _next(self, request: Request, logits: torch.Tensor | None, token: int | None = None) -> Event:
        """The event of one request's next token: token when already chosen (plain greedy), else drawn from logits."""
        s = request.sampling
        if token is None:
            logits = _penalized(request, logits)
            token = _choose(request, logits)
        if request.first_token_s is None:
            request.first_token_s = time.perf_counter() - request.submitted
        request.tokens.append(token)
        request.counts[token] += 1
        logprobs = [] if s.logprobs is None else [self._logprob(token, logits.log_softmax(-1), s.logprobs)]
        finish = None
        if token == self.tokenizer.eos_id:
            finish = "stop"
        elif request.text.add(request.detokenizer.add(token)):
            finish = "stop"
        elif len(request.tokens) >= s.max_tokens or len(request.prompt) + len(request.tokens) >= self.cache.max_len:
            finish = "length"
        if finish is not None:
            if not request.text.stopped:  # an unfinished character or held-back text is final now
                request.text.add(request.detokenizer.flush())
            request.text.close()
        text = "".join(request.pieces)
        request.pieces.clear()
        return Event(text, [token], logprobs, finish)

    def _logprob(self, token: int, log_probs: torch.Tensor, top: int) -> dict:
        entry = {"token": self.tokenizer.decode([token]), "logprob": float(log_probs[token]), "top": {}}
        if top:
            values, ids = log_probs.topk(top)
            entry["top"] = {self.tokenizer.decode([i]): float(v) for v, i in zip(values, ids.tolist(), strict=True)}
        return entry


def _plain_greedy(request: Request) -> bool:
    """Greedy decoding that needs no logit but the largest: no penalty to apply, no log-probabilities to report."""
    s = request.sampling
    return s.temperature < MIN_TEMPERATURE and not (s.presence_penalty or s.frequency_penalty) and s.logprobs is None


def _penalized(request: Request, logits: torch.Tensor) -> torch.Tensor:
    """logits less the request's presence and frequency penalties (OpenAI's: on the tokens generated so far)."""
    s = request.sampling
    if not request.counts or not (s.presence_penalty or s.frequency_penalty):
        return logits
    ids = torch.tensor(list(request.counts), device=logits.device)
    counts = torch.tensor(list(request.counts.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(0, ids, -(s.frequency_penalty * counts + s.presence_penalty))


def _choose(request: Request, logits: torch.Tensor) -> int:
    """The next token from a request's fp32 logits: greedy or sampled."""
    s = request.sampling
    if s.temperature < MIN_TEMPERATURE:  # logits / 1e-40 overflow: what tiny temperatures tend to anyway
        return int(logits.argmax())
    filtered = process_logits(logits[None], None, s.temperature, s.top_k, s.top_p)[0]
    return int(torch.multinomial(filtered.softmax(-1), 1, generator=request.generator))
