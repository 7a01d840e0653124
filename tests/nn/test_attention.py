"""Scaled dot-product attention, its masks and multi-head attention, against the formula computed by hand."""

import math

import pytest
import torch

from lmforge.nn import MultiHeadAttention, attention_mask, scaled_dot_product_attention

CPU = torch.device("cpu")


def naive_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d_k)) v one query row at a time, in float64 Python arithmetic on the scores."""
    q, k, v = q.detach(), k.detach(), v.detach()
    b, h, t, d = q.shape
    s = k.size(2)
    allowed = torch.ones(b, h, t, s, dtype=torch.bool) if mask is None else mask.expand(b, h, t, s)
    out = torch.zeros(b, h, t, v.size(-1), dtype=torch.float64)
    weights = torch.zeros(b, h, t, s, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                scores = []
                for j in range(s):
                    dot = sum(float(q[bi, hi, i, c]) * float(k[bi, hi, j, c]) for c in range(d))
                    scores.append(dot / math.sqrt(d) if allowed[bi, hi, i, j] else -math.inf)
                top = max(scores)
                exp = [math.exp(score - top) for score in scores]
                total = sum(exp)
                for j, e in enumerate(exp):
                    weights[bi, hi, i, j] = e / total
                    out[bi, hi, i] += (e / total) * v[bi, hi, j].double()
    return out, weights


def qkv(b=2, h=2, t=3, s=5, d=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, t, d, generator=g, dtype=dtype),
        torch.randn(b, h, s, d, generator=g, dtype=dtype),
        torch.randn(b, h, s, d, generator=g, dtype=dtype),
    )


def masks(t=3, s=5, b=2):
    g = torch.Generator().manual_seed(1)
    random = torch.rand(b, 1, t, s, generator=g) > 0.4
    random[..., 0] = True  # every row keeps at least one key
    return {
        "none": None,
        "causal": attention_mask(t, s, True, None, CPU),
        "padding": attention_mask(t, s, False, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), CPU),
        "random": random,
    }


@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "random"])
@pytest.mark.parametrize("need_weights", [False, True])
def test_sdpa_equals_naive_formula(mask_name, need_weights):
    q, k, v = qkv()
    mask = masks()[mask_name]
    expected, expected_weights = naive_attention(q, k, v, mask)
    out, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, atol=1e-12, rtol=1e-10)
    else:
        assert weights is None


@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "random"])
def test_fast_and_explicit_paths_agree(mask_name):
    q, k, v = qkv(dtype=torch.float32, seed=3)
    mask = masks()[mask_name]
    fast, _ = scaled_dot_product_attention(q, k, v, mask, need_weights=False)
    explicit, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=True)
    torch.testing.assert_close(fast, explicit, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-6, rtol=0)
    if mask is not None:
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()


def test_causal_mask_square_is_lower_triangular():
    mask = attention_mask(4, 4, True, None, CPU)
    assert torch.equal(mask[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())


def test_causal_mask_aligns_bottom_right_after_a_cache():
    # 2 new queries after 3 cached keys: query i is position 3 + i and sees keys 0 .. 3 + i
    mask = attention_mask(2, 5, True, None, CPU)
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    assert attention_mask(1, 5, True, None, CPU)[0, 0].all()  # one decoded token sees the whole cache


def test_no_mask_when_nothing_is_masked():
    assert attention_mask(3, 3, False, None, CPU) is None


@pytest.mark.parametrize("t,s", [(3, 5), (5, 3), (4, 4)])
def test_padded_keys_are_never_visible(t, s):
    # also holds for cross-attention, where t != s and a query has no "own" key
    padding = torch.ones(3, s, dtype=torch.bool)
    padding[0, -1] = False
    padding[1, 0] = False
    padding[2, ::2] = False
    mask = attention_mask(t, s, False, padding, CPU)
    assert not mask.expand(3, 1, t, s)[~padding[:, None, None, :].expand(3, 1, t, s)].any()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_padded_rows_stay_finite(causal, need_weights):
    torch.manual_seed(0)
    padding = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)  # left padding; a row of pure padding
    mask = attention_mask(4, 4, causal, padding, CPU)
    mha = MultiHeadAttention(8, 2)
    y, weights = mha(torch.randn(2, 4, 8), mask, need_weights=need_weights)
    assert torch.isfinite(y).all()
    if need_weights:
        assert torch.isfinite(weights).all()
    context_mask = attention_mask(4, 3, False, torch.zeros(2, 3, dtype=torch.bool), CPU)  # all-padding context
    y, _ = mha(torch.randn(2, 4, 8), context_mask, context=torch.randn(2, 3, 8), need_weights=need_weights)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("causal", [False, True])
def test_mha_gives_padded_keys_zero_weight(causal):
    torch.manual_seed(0)
    padding = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)  # right and left padding
    mha = MultiHeadAttention(8, 2)
    _, weights = mha(torch.randn(2, 5, 8), attention_mask(5, 5, causal, padding, CPU), need_weights=True)
    for b in range(2):
        real = padding[b]
        rows = weights[b][:, real]  # queries at real positions, (n_head, n_real, S)
        assert (rows[..., ~real] == 0).all()
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]))


def split_heads(x, n_head):
    b, t, d = x.shape
    return x.view(b, t, n_head, d // n_head).transpose(1, 2)


def test_mha_self_attention_equals_per_head_formula():
    torch.manual_seed(0)
    d, n_head = 8, 2
    mha = MultiHeadAttention(d, n_head).double()
    x = torch.randn(2, 3, d, dtype=torch.float64)
    wq, wk, wv = mha.qkv.weight.split(d)
    bq, bk, bv = mha.qkv.bias.split(d)
    q, k, v = (split_heads(x @ w.T + bias, n_head) for w, bias in ((wq, bq), (wk, bk), (wv, bv)))
    mask = attention_mask(3, 3, True, None, CPU)
    heads, _ = naive_attention(q, k, v, mask)
    expected = heads.transpose(1, 2).reshape(2, 3, d) @ mha.out.weight.T + mha.out.bias
    y, _ = mha(x, mask)
    torch.testing.assert_close(y, expected)


def test_mha_cross_attention_takes_keys_and_values_from_context():
    torch.manual_seed(0)
    d, n_head = 8, 2
    mha = MultiHeadAttention(d, n_head).double()
    x, context = torch.randn(2, 3, d, dtype=torch.float64), torch.randn(2, 5, d, dtype=torch.float64)
    wq, wk, wv = mha.qkv.weight.split(d)
    bq, bk, bv = mha.qkv.bias.split(d)
    q = split_heads(x @ wq.T + bq, n_head)
    k, v = split_heads(context @ wk.T + bk, n_head), split_heads(context @ wv.T + bv, n_head)
    heads, _ = naive_attention(q, k, v)
    expected = heads.transpose(1, 2).reshape(2, 3, d) @ mha.out.weight.T + mha.out.bias
    y, _ = mha(x, context=context)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("need_weights", [False, True])
def test_mha_gradcheck_with_mask(need_weights):
    torch.manual_seed(0)
    mha = MultiHeadAttention(4, 2).double()
    names = [n for n, _ in mha.named_parameters()]
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = attention_mask(3, 3, True, torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.bool), CPU)

    def f(x, *weights):
        return torch.func.functional_call(
            mha, dict(zip(names, weights, strict=True)), (x, mask), {"need_weights": need_weights}
        )[0]

    params = [p.detach().requires_grad_() for p in mha.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("need_weights", [False, True])
def test_unscaled_attention_with_a_bias_is_the_formula(need_weights):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 8) for _ in range(3))
    bias = torch.randn(1, 3, 4, 4)
    mask = attention_mask(4, 4, True, None, q.device)
    out, _ = scaled_dot_product_attention(q, k, v, mask, need_weights=need_weights, bias=bias, scale=False)
    scores = (q @ k.transpose(-2, -1) + bias).masked_fill(~mask, float("-inf"))
    assert torch.allclose(out, scores.softmax(-1) @ v, atol=1e-5)


def test_mha_head_size_apart_from_d_model():
    mha = MultiHeadAttention(d_model=12, n_head=4, d_head=5, bias=False, scale=False)
    assert mha.qkv.weight.shape == (60, 12) and mha.out.weight.shape == (12, 20)
    assert mha(torch.randn(2, 3, 12))[0].shape == (2, 3, 12)
