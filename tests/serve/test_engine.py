"""Continuous batching decodes each request exactly as it would decode alone, whenever it joins and leaves."""

import threading

import pytest
import torch
from helpers import tiny_gpt

from lmforge.generation.decoding import generate
from lmforge.kernels import apply_kernels
from lmforge.nn.cache import SlotCache
from lmforge.serve.engine import Engine, QueueFull, Request, Sampling
from lmforge.tokenizer import Tokenizer

TEXT = "abcdefghijklmnopqrstuvw"  # 23 characters: the tiny GPT's vocabulary


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_char([TEXT])


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_rows_of_different_lengths_decode_as_each_alone(position):
    """One forward pass over cache rows holding 3, 7 and 11 tokens gives each row the logits it gets alone."""
    model = tiny_gpt(position=position, max_seq_len=32)
    prompts = [torch.randint(0, 23, (1, n), generator=torch.Generator().manual_seed(n)) for n in (3, 7, 11)]
    cache = SlotCache(2, 4, 2, 32, 8, torch.float32, "cpu")
    for row, prompt in enumerate(prompts):
        model.hidden(prompt, cache=cache.rows(1, first=row))
    step = torch.tensor([[5], [6], [7]])
    hidden, _ = model.hidden(step, cache=cache.rows(3))
    for row, prompt in enumerate(prompts):
        alone, _ = model.hidden(torch.cat([prompt, step[row : row + 1]], dim=1))
        torch.testing.assert_close(hidden[row, -1], alone[0, -1], atol=1e-5, rtol=1e-5)
    cache.move(2, 0)  # row 0 leaves; the last row takes its place and decodes on from there
    hidden, _ = model.hidden(torch.tensor([[8], [9]]), cache=cache.rows(2))
    alone, _ = model.hidden(torch.cat([prompts[2], step[2:], torch.tensor([[8]])], dim=1))
    torch.testing.assert_close(hidden[0, -1], alone[0, -1], atol=1e-5, rtol=1e-5)


def run(engine: Engine, tokenizer, prompts: list[str], sampling: list[Sampling], start: bool = False) -> list[list]:
    """Submits the prompts one after another (they join a running batch; with start, they wait until the engine
    starts and are prefilled together) and waits for each one's events."""
    events = [[] for _ in prompts]
    done = [threading.Event() for _ in prompts]

    def on_event(i):
        def record(event):
            events[i].append(event)
            if event.finish_reason:
                done[i].set()

        return record

    for i, (prompt, s) in enumerate(zip(prompts, sampling, strict=True)):
        engine.submit(Request(tokenizer.encode(prompt), s, on_event(i), tokenizer))
    if start:
        engine.start()
    for d in done:
        assert d.wait(30)
    return events


@pytest.mark.parametrize("together", [False, True])
@pytest.mark.parametrize("screen", [False, True])
def test_greedy_requests_in_a_shared_batch_equal_greedy_decoding_alone(tokenizer, together, screen, monkeypatch):
    """Prompts of 1 to 10 tokens, prefilled as they come or together (padded to the longest), 3 rows for 6; with
    screen, the batch's greedy tokens come from the LM head's int8 screen (lmforge.kernels.argmax), made to apply to
    this tiny head, and must still be fp32's."""
    model = tiny_gpt(max_seq_len=48)
    if screen:
        monkeypatch.setattr("lmforge.kernels.argmax.SCREEN_MIN_NUMEL", 0)
        model = apply_kernels(model)
    engine = Engine(model, tokenizer, max_batch=3, max_queue=8)
    try:
        prompts = ["abc", "hel", "wvutsr", "a", "mnopqrstuv", "ggg"]
        lengths = [5, 12, 3, 20, 9, 1]
        if not together:
            engine.start()
        sampling = [Sampling(max_tokens=n, temperature=0) for n in lengths]
        events = run(engine, tokenizer, prompts, sampling, start=together)
    finally:
        engine.stop()
    assert engine.steps > 0
    assert (getattr(model.lm_head, "_argmax_screen", None) is not None) == screen  # the head was asked for argmaxes
    for prompt, n, got in zip(prompts, lengths, events, strict=True):
        ids = torch.tensor([tokenizer.encode(prompt)])
        expected = generate(model, ids, n, greedy=True)[0, ids.size(1) :].tolist()
        assert [t for e in got for t in e.tokens] == expected
        assert "".join(e.text for e in got) == tokenizer.decode(expected)
        assert got[-1].finish_reason == "length" and all(e.finish_reason is None for e in got[:-1])


def test_stop_strings_seeds_and_logprobs(tokenizer):
    model = tiny_gpt(max_seq_len=48)
    engine = Engine(model, tokenizer, max_batch=4).start()
    try:
        free = run(engine, tokenizer, ["abc"], [Sampling(max_tokens=12, temperature=0)])[0]
        text = "".join(e.text for e in free)
        stop = text[4:6]
        stopped, seeded, again = run(
            engine, tokenizer, ["abc", "abc", "abc"],
            [Sampling(max_tokens=12, temperature=0, stop=[stop], logprobs=2),
             Sampling(max_tokens=8, temperature=1.0, seed=7), Sampling(max_tokens=8, temperature=1.0, seed=7)],
        )  # fmt: skip
    finally:
        engine.stop()
    assert "".join(e.text for e in stopped) == text[: text.find(stop)] and stopped[-1].finish_reason == "stop"
    entry = stopped[0].logprobs[0]
    assert entry["logprob"] <= 0 and len(entry["top"]) == 2 and max(entry["top"].values()) == entry["logprob"]
    assert [e.tokens for e in seeded] == [e.tokens for e in again]


def test_a_full_queue_is_refused_and_a_cancelled_request_leaves(tokenizer):
    model = tiny_gpt(max_seq_len=48)
    engine = Engine(model, tokenizer, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    for _ in range(2):  # one for the free row, one queued
        engine.submit(Request([1, 2], Sampling(), lambda e: None, tokenizer))
    with pytest.raises(QueueFull):
        engine.submit(Request([1, 2], Sampling(), lambda e: None, tokenizer))
    engine = Engine(model, tokenizer, max_batch=2).start()
    try:
        seen = []
        request = Request([1, 2], Sampling(max_tokens=40, temperature=0), seen.append, tokenizer)
        request.cancelled = True
        engine.submit(request)
        events = run(engine, tokenizer, ["abc"], [Sampling(max_tokens=4, temperature=0)])[0]
    finally:
        engine.stop()
    assert seen == [] and events[-1].finish_reason == "length" and engine.live == []
