"""Decoding: greedy and sampled generation with a KV cache, and the logit controls, against hand computations."""

import math

import helpers
import pytest
import torch

from lmforge.generation.decoding import generate, process_logits, stream

POSITIONS = ["learned", "sinusoidal", "rotary"]


def tiny_gpt(seed=0, gpt2_init=False, **overrides):
    return helpers.tiny_gpt(seed, gpt2_init, **{"max_seq_len": 32, **overrides})


def prompt(b=2, t=5, seed=1):
    return torch.randint(0, 23, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("position", POSITIONS)
def test_greedy_equals_argmax_of_full_forward(position):
    model = tiny_gpt(position=position)
    idx = prompt()
    seq = idx
    with torch.no_grad():
        for _ in range(20):  # no cache: the whole sequence each step
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(generate(model, idx, 20, greedy=True), seq)
    assert torch.equal(model.generate(idx, 20, temperature=0), seq)  # temperature 0 is greedy too


def test_seed_makes_sampling_reproducible():
    model = tiny_gpt()
    idx = prompt()
    a = generate(model, idx, 20, temperature=2.0, seed=1)
    assert torch.equal(a, generate(model, idx, 20, temperature=2.0, seed=1))
    assert not torch.equal(a, generate(model, idx, 20, temperature=2.0, seed=2))
    assert torch.equal(a[:, :5], idx) and a.shape == (2, 25)


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    for k in (1, 5, 49):
        out = process_logits(logits, top_k=k)
        finite = torch.isfinite(out)
        assert (finite.sum(-1) == k).all()
        assert torch.equal(finite, logits >= logits.topk(k, dim=-1).values[:, -1:])
        assert torch.equal(out[finite], logits[finite])  # the kept logits are untouched
    assert torch.equal(process_logits(logits, top_k=50), logits)


def nucleus_by_hand(row, p):
    """Indices of the smallest set of most probable tokens whose probability mass reaches p."""
    probs = [math.exp(x) for x in row]
    total = sum(probs)
    kept, mass = set(), 0.0
    for i in sorted(range(len(row)), key=lambda i: -probs[i]):
        kept.add(i)
        mass += probs[i] / total
        if mass >= p:
            break
    return kept


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.2, 0.1]])
    logits = probs.log()
    for p, expected in ((0.3, {1}), (0.6, {1, 3}), (0.8, {1, 3, 0}), (0.9, {1, 3, 0, 4}), (0.99, {0, 1, 2, 3, 4})):
        kept = set(torch.isfinite(process_logits(logits, top_p=p))[0].nonzero().flatten().tolist())
        assert kept == expected == nucleus_by_hand(logits[0].tolist(), p), p
    random = torch.randn(4, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for p in (0.1, 0.5, 0.77, 0.95):
        out = process_logits(random, top_p=p)
        for b in range(4):
            kept = set(torch.isfinite(out[b]).nonzero().flatten().tolist())
            assert kept == nucleus_by_hand(random[b].tolist(), p)
            assert torch.equal(out[b][list(kept)], random[b][list(kept)])


def test_temperature_divides_logits():
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(process_logits(logits, temperature=2.0), logits / 2)
    torch.testing.assert_close(process_logits(logits, temperature=0.5), logits * 2)
    assert torch.equal(process_logits(logits), logits)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, 2.0, -1.0, -1.0, 0.5], [1.0, -3.0, 4.0, 0.0, -0.5]])
    seen = torch.tensor([[1, 3, 3], [4, 2, 1]])  # a token seen twice is penalized once
    out = process_logits(logits, seen, repetition_penalty=2.0)
    expected = torch.tensor([[2.0, 1.0, -1.0, -2.0, 0.5], [1.0, -6.0, 2.0, 0.0, -1.0]])
    assert torch.equal(out, expected)


def test_greedy_with_repetition_penalty_penalizes_prompt_and_generated_tokens():
    model = tiny_gpt()
    idx = prompt()
    seq = idx
    with torch.no_grad():
        for _ in range(12):  # no cache; every id so far counts as seen
            logits = process_logits(model(seq)[:, -1], seq, repetition_penalty=1.8)
            seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), dim=1)
    out = generate(model, idx, 12, greedy=True, repetition_penalty=1.8, top_k=3, temperature=0.7)
    assert torch.equal(out, seq)
    assert not torch.equal(out, generate(model, idx, 12, greedy=True))


def test_eos_stops_generation():
    model = tiny_gpt()
    idx = prompt(b=1)
    greedy = generate(model, idx, 10, greedy=True)
    eos = int(greedy[0, 7])  # the third new token
    first = int((greedy[0, 5:] == eos).nonzero()[0])
    out = generate(model, idx, 10, greedy=True, eos_id=eos)
    assert torch.equal(out, greedy[:, : 5 + first + 1])
    assert out[0, -1] == eos


def test_eos_pads_finished_rows_until_all_finish():
    model = tiny_gpt()
    idx = prompt()
    greedy = generate(model, idx, 10, greedy=True)
    eos = int(greedy[0, 6])  # row 0 stops at its second new token
    out = generate(model, idx, 10, greedy=True, eos_id=eos)
    row0_end = 5 + int((greedy[0, 5:] == eos).nonzero()[0]) + 1
    assert (out[0, row0_end:] == eos).all()
    assert torch.equal(out[0, :row0_end], greedy[0, :row0_end])


def test_should_stop_ends_early():
    model = tiny_gpt()
    out = generate(model, prompt(), 10, greedy=True, should_stop=lambda seq: seq.size(1) >= 8)
    assert out.shape == (2, 8)


def test_prompt_longer_than_context_raises():
    model = tiny_gpt(max_seq_len=8)
    with pytest.raises(ValueError, match="context"):
        generate(model, prompt(t=9), 2)


@pytest.mark.parametrize("position", POSITIONS)
def test_generation_slides_past_max_seq_len(position):
    model = tiny_gpt(position=position, max_seq_len=8)
    idx = prompt()
    out = generate(model, idx, 20, greedy=True)
    assert out.shape == (2, 25)
    assert torch.equal(out[:, :5], idx)
    assert ((out >= 0) & (out < 23)).all()
    # until the window fills, the tokens are the ones a full forward would pick
    seq = idx
    with torch.no_grad():
        for _ in range(3):
            seq = torch.cat((seq, model(seq)[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out[:, :8], seq)
    # sampled, too
    assert generate(model, idx, 20, temperature=1.5, top_k=5, top_p=0.9, seed=0).shape == (2, 25)


def test_stream_yields_one_token_per_step_and_generate_restores_training_mode():
    model = tiny_gpt()
    steps = list(stream(model, prompt(), 4, greedy=True))
    assert len(steps) == 4 and all(s.shape == (2,) for s in steps)
    model.train()
    generate(model, prompt(), 2)
    assert model.training
