"""The fused LM-head cross-entropy against F.cross_entropy on materialized logits, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.nn import linear_cross_entropy

N, D, V = 10, 6, 11


def inputs(ignored=(), dtype=torch.float64, seed=0, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, D, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (N,), generator=g)
    targets[list(ignored)] = ignore_index
    return x, weight, targets


def reference(x, weight, targets, ignore_index=-100, scale=1.0):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = F.cross_entropy(x @ weight.T, targets, ignore_index=ignore_index)
    (loss * scale).backward()
    return loss.detach(), x.grad, weight.grad


def check(x, weight, targets, chunk_rows, ignore_index=-100, scale=1.0, tol=1e-12):
    expected, grad_x, grad_w = reference(x, weight, targets, ignore_index, scale)
    loss = linear_cross_entropy(x, weight, targets, ignore_index, chunk_rows)
    (loss * scale).backward()
    torch.testing.assert_close(loss, expected, atol=tol, rtol=tol)
    torch.testing.assert_close(x.grad, grad_x, atol=tol, rtol=tol)
    torch.testing.assert_close(weight.grad, grad_w, atol=tol, rtol=tol)


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 7, 10, 1024])  # 3, 4 and 7 do not divide N = 10
def test_equals_cross_entropy_on_logits(chunk_rows):
    check(*inputs(), chunk_rows)


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 1024])
def test_ignored_rows_do_not_count(chunk_rows):
    # rows 0-3 ignored: with chunk_rows 1, 3 or 4 whole chunks are ignored
    check(*inputs(ignored=(0, 1, 2, 3, 8)), chunk_rows)


@pytest.mark.parametrize("ignore_index", [0, V, 10_000])  # a real token id, or one outside the vocabulary
def test_any_ignore_index(ignore_index):
    x, weight, targets = inputs(ignored=(2, 5), ignore_index=ignore_index)
    check(x, weight, targets, 3, ignore_index=ignore_index)


@pytest.mark.parametrize("chunk_rows", [3, 1024])
def test_gradients_follow_a_loss_multiplier(chunk_rows):
    check(*inputs(ignored=(4,)), chunk_rows, scale=3.0)


def test_all_rows_ignored_gives_zero_loss_and_gradients():
    # F.cross_entropy would give nan (0 / 0); a batch of padding should not poison training instead
    x, weight, targets = inputs(ignored=range(N))
    loss = linear_cross_entropy(x, weight, targets, chunk_rows=3)
    loss.backward()
    assert loss.item() == 0.0
    assert (x.grad == 0).all() and (weight.grad == 0).all()


def test_batched_input_and_frozen_weight():
    x, weight, targets = inputs(seed=1)
    weight = weight.detach()
    expected, grad_x, _ = reference(x, weight, targets)
    loss = linear_cross_entropy(x.view(2, 5, D), weight, targets.view(2, 5), chunk_rows=4)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, grad_x)
    assert weight.grad is None


def test_float32_matches_within_rounding():
    check(*inputs(ignored=(1,), dtype=torch.float32, seed=2), 3, tol=1e-5)


def test_gradcheck():
    x, weight, targets = inputs(ignored=(3,))
    assert torch.autograd.gradcheck(lambda x, w: linear_cross_entropy(x, w, targets, chunk_rows=3), (x, weight))
