"""The int8 screen of greedy decoding: its bound holds, and it returns the fp32 argmax, ties and all."""

import pytest
import torch
from helpers import tiny_gpt

from lmforge.kernels import apply_kernels
from lmforge.kernels import argmax as argmax_module
from lmforge.kernels.argmax import ArgmaxScreen
from lmforge.kernels.int8 import int_mm_runs, quantize_rows, u8_product_runs
from lmforge.kernels.linear import Linear

pytestmark = pytest.mark.skipif(not int_mm_runs(), reason="no CPU torch._int_mm in this torch")


@pytest.fixture(autouse=True, params=["int8", "uint8"])
def screen_small_heads(monkeypatch, request):
    """Screen the small weights of these tests too (by default only heads of 16 MB and more are screened), on any
    CPU whose torch._int_mm runs, fast (VNNI) or not, by either product: int8 x int8 (CPUs with VNNI) and uint8 x
    int8 (those without)."""
    monkeypatch.setattr(argmax_module, "SCREEN_MIN_NUMEL", 0)
    monkeypatch.setattr(argmax_module, "int_mm_works", lambda: True)
    unsigned = request.param == "uint8"
    if unsigned and not u8_product_runs():
        pytest.skip("no oneDNN uint8 x int8 product in this torch")
    monkeypatch.setattr(argmax_module, "u8_product_works", lambda: unsigned)


def head(weight: torch.Tensor) -> Linear:
    lin = Linear(weight.size(1), weight.size(0), bias=False)
    lin.weight = torch.nn.Parameter(weight)
    return lin


def reference(x, w):
    return (x.double() @ w.double().t()).argmax(dim=-1)


def test_the_bound_holds_for_every_row():
    """|x.W_i - approx_i| <= margin_i, in float64, on weights and inputs of very different scales."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3000, 96, generator=g) * torch.logspace(-3, 1, 3000)[:, None]
    x = torch.randn(6, 96, generator=g) * torch.tensor([1e-3, 0.1, 1.0, 1.0, 10.0, 300.0])[:, None]
    x[3, :48] = 0  # a row with many exact zeros
    screen = ArgmaxScreen(w)
    x_q, s_x = quantize_rows(x)
    approx = (x_q.double() @ screen.q.double().t()) * s_x.double()[:, None] * screen.scale.double()
    a = (s_x * x_q.float().norm(dim=1)).double()[:, None]
    e = (x - x_q * s_x[:, None]).double().norm(dim=1, keepdim=True)
    margin = a * screen.d_norm.double() + e * screen.w_norm.double()
    error = ((x.double() @ w.double().t()) - approx).abs()
    assert (error <= margin).all()
    assert (margin < 0.05 * (x.double().norm(dim=1, keepdim=True) * screen.w_norm.double())).all()  # it is tight


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 30.0])
def test_screened_argmax_is_the_full_products(batch, temperature):
    """Flat logits (many candidates) to peaked ones (a few): the index of the fp32 logits' maximum every time."""
    g = torch.Generator().manual_seed(1)
    lin = head(torch.randn(5000, 64, generator=g) * 0.02)
    for _ in range(20):
        x = torch.randn(batch, 64, generator=g) * temperature
        with torch.inference_mode():
            got = lin.argmax(x)
        assert torch.equal(got, reference(x, lin.weight))
    assert lin._argmax_screen is not None  # the screen ran


def test_screen_keeps_only_few_rows_and_always_the_best():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(20000, 128, generator=g) * 0.02
    x = torch.nn.functional.layer_norm(torch.randn(1, 128, generator=g), (128,))
    rows = ArgmaxScreen(w).candidates(x)
    assert rows is not None and 1 <= rows.numel() < 200
    assert int(reference(x, w)) in rows.tolist()


def test_ties_go_to_the_lowest_index_and_many_candidates_fall_back_to_the_full_product():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4000, 32, generator=g) * 0.02
    x = torch.randn(2, 32, generator=g)
    w[[7, 2900]] = x[0] * 5  # the same largest logit on two rows
    lin = head(w)
    with torch.no_grad():
        assert lin.argmax(x)[0] == 7 == (x @ w.t()).argmax(-1)[0]
    same = head(torch.ones(4000, 32))  # every row ties: nothing can be ruled out
    assert ArgmaxScreen(same.weight).candidates(x) is None
    with torch.no_grad():
        assert same.argmax(x).tolist() == [0, 0]


def test_a_hidden_state_that_is_not_finite_gets_the_full_products_answer():
    lin = head(torch.randn(3000, 32, generator=torch.Generator().manual_seed(7)))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(2, 32)
        x[1, 3] = bad
        with torch.no_grad():
            assert lin._argmax_screen is None or lin._argmax_screen.candidates(x) is None
            assert torch.equal(lin.argmax(x), (x @ lin.weight.t()).argmax(-1))


def test_near_ties_are_resolved_in_fp32():
    """Two rows 1e-5 apart in logit, far below int8 resolution: the screen keeps both and fp32 decides."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3000, 64, generator=g) * 0.02
    x = torch.randn(1, 64, generator=g)
    w[100] = x[0] / x[0].norm() ** 2 * 3.0
    w[2000] = w[100] + 1e-5 * x[0] / x[0].norm() ** 2  # logit 3.00001 against 3.0
    with torch.no_grad():
        assert int(head(w).argmax(x)) == 2000 == int(reference(x, w))


def test_the_screen_follows_changes_to_the_weight():
    g = torch.Generator().manual_seed(5)
    lin = head(torch.randn(3000, 32, generator=g))
    x = torch.randn(1, 32, generator=g)
    with torch.no_grad():
        lin.argmax(x)
        screen = lin._argmax_screen
        lin.argmax(x)
        assert lin._argmax_screen is screen  # reused while the weight is unchanged
        lin.weight.neg_()  # in place, as an optimizer step or load_state_dict
        assert torch.equal(lin.argmax(x), reference(x, lin.weight)) and lin._argmax_screen is not screen
        lin.weight = torch.nn.Parameter(torch.randn(3000, 32, generator=g))
        assert torch.equal(lin.argmax(x), reference(x, lin.weight))


def test_no_screen_with_a_bias_a_gradient_or_another_dtype():
    x = torch.randn(1, 32)
    with_bias = Linear(32, 3000)
    assert torch.equal(with_bias.argmax(x), with_bias(x).argmax(-1)) and with_bias._argmax_screen is None
    lin = head(torch.randn(3000, 32))
    lin.argmax(x)  # grad mode, weight requires grad
    assert lin._argmax_screen is None
    with torch.no_grad():
        lin.double().argmax(x.double())
    assert lin._argmax_screen is None


def test_greedy_generation_is_the_same_with_and_without_the_screen(monkeypatch):
    model = tiny_gpt(vocab_size=3000, d_model=32, max_seq_len=64)
    prompt = torch.randint(3000, (2, 5), generator=torch.Generator().manual_seed(6))
    plain = model.generate(prompt, 40, greedy=True)  # nn.Linear's head: the argmax of the logits
    screened = apply_kernels(model.eval()).generate(prompt, 40, greedy=True)  # train() would drop the screen
    assert model.lm_head._argmax_screen is not None and torch.equal(screened, plain)
    monkeypatch.setattr(argmax_module, "int_mm_works", lambda: False)
    assert torch.equal(screened, model.generate(prompt, 40, greedy=True))
