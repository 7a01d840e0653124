"""The fused LM-head cross-entropy against F.cross_entropy on materialized logits, in value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.kernels import cross_entropy, linear
from lmforge.kernels.cross_entropy import linear_cross_entropy
from lmforge.kernels.native import softmax_cross_entropy_runs

N, D, V = 10, 6, 11


@pytest.fixture(params=["rows first", "vocabulary first"])
def layout(request, monkeypatch):
    """Both ways of forming a chunk's logits, x W^T and W x^T, whichever this CPU takes."""
    monkeypatch.setattr(cross_entropy, "vocab_major_logits", lambda *_: request.param == "vocabulary first")


def inputs(ignored=(), dtype=torch.float64, seed=0, ignore_index=-100, n=N, v=V):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, D, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
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


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 7, 10, 1024])  # 3, 4 and 7 do not divide N = 10
def test_equals_cross_entropy_on_logits(chunk_rows):
    check(*inputs(), chunk_rows)


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 1024])
def test_ignored_rows_do_not_count(chunk_rows):
    # rows 0-3 ignored: with chunk_rows 1, 3 or 4 whole chunks are ignored
    check(*inputs(ignored=(0, 1, 2, 3, 8)), chunk_rows)


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("ignore_index", [0, V, 10_000])  # a real token id, or one outside the vocabulary
def test_any_ignore_index(ignore_index):
    x, weight, targets = inputs(ignored=(2, 5), ignore_index=ignore_index)
    check(x, weight, targets, 3, ignore_index=ignore_index)


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("chunk_rows", [3, 1024])
def test_gradients_follow_a_loss_multiplier(chunk_rows):
    check(*inputs(ignored=(4,)), chunk_rows, scale=3.0)


@pytest.mark.usefixtures("layout")
def test_all_rows_ignored_gives_zero_loss_and_gradients():
    # F.cross_entropy would give nan (0 / 0); a batch of padding should not poison training instead
    x, weight, targets = inputs(ignored=range(N))
    loss = linear_cross_entropy(x, weight, targets, chunk_rows=3)
    loss.backward()
    assert loss.item() == 0.0
    assert (x.grad == 0).all() and (weight.grad == 0).all()


@pytest.mark.usefixtures("layout")
def test_batched_input_and_frozen_weight():
    x, weight, targets = inputs(seed=1)
    weight = weight.detach()
    expected, grad_x, _ = reference(x, weight, targets)
    loss = linear_cross_entropy(x.view(2, 5, D), weight, targets.view(2, 5), chunk_rows=4)
    loss.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(x.grad, grad_x)
    assert weight.grad is None


@pytest.mark.usefixtures("layout")
def test_float32_matches_within_rounding():
    check(*inputs(ignored=(1,), dtype=torch.float32, seed=2), 3, tol=1e-5)


@pytest.mark.usefixtures("layout")
def test_gradcheck():
    x, weight, targets = inputs(ignored=(3,))
    assert torch.autograd.gradcheck(lambda x, w: linear_cross_entropy(x, w, targets, chunk_rows=3), (x, weight))


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("chunk_rows", [3, 1024])
def test_bias_equals_cross_entropy_on_biased_logits(chunk_rows):
    x, weight, targets = inputs(ignored=(2, 7))
    bias = torch.randn(V, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    x2, w2, b2 = (t.detach().requires_grad_() for t in (x, weight, bias))
    expected = F.cross_entropy(F.linear(x2, w2, b2), targets)
    expected.backward()
    loss = linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows, bias=bias)
    loss.backward()
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=1e-12)
    for got, want in ((x.grad, x2.grad), (weight.grad, w2.grad), (bias.grad, b2.grad)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("chunk_rows", [3, 1024])
def test_correct_counts_counted_rows_whose_target_is_the_top_logit(chunk_rows):
    x, weight, targets = inputs(ignored=(0, 4))
    top = (x @ weight.T).argmax(dim=-1)
    targets[1::2] = top[1::2]  # every odd row right, so at least 5 rights; row 0 ignored whatever it is
    expected = int(((top == targets) & (targets != -100)).sum())
    loss, correct = linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows, return_correct=True)
    assert correct.dtype == torch.int64 and int(correct) == expected >= 4
    loss.backward()  # the count does not get in the way of the gradient
    assert x.grad is not None


@pytest.mark.parametrize("chunk_rows", [3, None])
def test_bf16_autocast_equals_autocast_cross_entropy_on_logits(chunk_rows):
    """Under bf16 autocast the products run in bf16 (the gradient cast once), the softmax in fp32: the loss and
    gradients of F.cross_entropy on autocast's bf16 logits, within bf16 rounding."""
    x, weight, targets = inputs(dtype=torch.float32)
    x, weight = (x * 3).detach().requires_grad_(), weight.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows)
    loss.backward()
    x2, w2 = x.detach().requires_grad_(), weight.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(F.linear(x2, w2).float(), targets)
    expected.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - expected.item()) < 1e-5 * max(1, expected.item())
    torch.testing.assert_close(x.grad, x2.grad, rtol=2e-2, atol=2e-2 * x2.grad.abs().max().item())
    torch.testing.assert_close(weight.grad, w2.grad, rtol=2e-2, atol=2e-2 * w2.grad.abs().max().item())


@pytest.mark.usefixtures("layout")
def test_targets_far_below_the_top_logit_get_their_exact_loss():
    """The log-sum-exp is read off the target's probability; where that probability underflows in fp32 (targets 150
    to 200 nats below the top logit) the row's logits give it instead, so the loss is the exact one, not inf, and an
    ignored row whose stand-in target underflows adds nothing (not inf x 0 = nan)."""
    torch.manual_seed(0)
    x, weight = torch.randn(4, 8), torch.randn(30, 8, requires_grad=True)
    x[1:3] = 0  # rows 1 and 2: their logits are the bias alone
    bias = torch.zeros(30)
    bias[0], bias[2] = 50.0, 200.0
    targets = torch.tensor([3, 7, 1, 0, -100])  # row 3's target sits 150 below token 2; row 4 is ignored
    x = torch.cat((x, torch.zeros(1, 8)))  # the ignored row: token 0, which stands in for its target, is 150 below
    ours = linear_cross_entropy(x, weight, targets, bias=bias)
    reference = F.cross_entropy(x @ weight.T + bias, targets)
    assert torch.isfinite(ours) and ours.item() > 100
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours, weight)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(x @ weight.T + bias, targets), weight)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def test_a_compiled_step_runs_the_loss_outside_its_graph(monkeypatch):
    """Its chunk loop is a few large products: torch.compile would gain nothing and unroll it."""
    import lmforge.kernels.cross_entropy as module

    seen, log_sum_exp = [], module._log_sum_exp
    monkeypatch.setattr(
        module, "_log_sum_exp", lambda *a: seen.append(torch.compiler.is_compiling()) or log_sum_exp(*a)
    )
    x, weight, targets = inputs()
    expected, grad_x, grad_w = reference(x, weight, targets)
    torch._dynamo.reset()
    step = torch.compile(lambda x, w, t: linear_cross_entropy(x.tanh().atanh(), w, t, -100, 4), backend="eager")
    loss = step(x, weight, targets)
    loss.backward()
    assert seen == [False, False, False]  # three chunks of at most 4 rows, each run eagerly
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(x.grad, grad_x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(weight.grad, grad_w, atol=1e-12, rtol=1e-12)


@pytest.mark.usefixtures("layout")
@pytest.mark.parametrize("chunk_rows", [3, 1024])
def test_label_smoothing_and_bias_equal_cross_entropy_on_logits(chunk_rows):
    x, weight, targets = inputs(ignored=(2,))
    bias = torch.randn(V, dtype=torch.float64, requires_grad=True)
    loss, correct, nll = linear_cross_entropy(
        x, weight, targets, chunk_rows=chunk_rows, bias=bias, return_correct=True, label_smoothing=0.1, return_nll=True
    )
    logits = x @ weight.T + bias
    expected = F.cross_entropy(logits, targets, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(nll, F.cross_entropy(logits, targets), atol=1e-12, rtol=1e-12)
    assert correct.item() == ((logits.argmax(-1) == targets) & (targets != -100)).sum().item()
    ours = torch.autograd.grad(loss, (x, weight, bias))
    for got, want in zip(ours, torch.autograd.grad(expected, (x, weight, bias)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_vocabulary_first_only_for_fp32_and_large_vocabularies_on_the_cpus_listed(monkeypatch):
    x, weight = torch.randn(2048, 8), torch.randn(2001, 8)
    monkeypatch.setattr(linear, "_onednn_linear", None)  # torch's product takes every row count
    monkeypatch.setattr(linear, "VOCAB_MAJOR", {(linear.cpu_vendor(), linear.has_avx512())})
    assert linear.vocab_major_logits(x, weight, None)
    assert not linear.vocab_major_logits(x, torch.randn(linear.VOCAB_MAJOR_MIN - 1, 8), None)
    assert not linear.vocab_major_logits(x, torch.randn(65, 8), None)  # char-small's letters: rows first, C softmax
    assert not linear.vocab_major_logits(x.double(), weight.double(), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear.vocab_major_logits(x, weight, None)
    monkeypatch.setattr(linear, "VOCAB_MAJOR", set())
    assert not linear.vocab_major_logits(x, weight, None)


needs_native = pytest.mark.skipif(not softmax_cross_entropy_runs(), reason="no AVX2 or no C compiler here")


def fp32_inputs(n: int, v: int, ignored=(), seed=0):
    """inputs in fp32, with a bias."""
    x, weight, targets = inputs(ignored, torch.float32, seed, n=n, v=v)
    return x, weight, torch.randn(v, generator=torch.Generator().manual_seed(seed)).requires_grad_(), targets


@needs_native
@pytest.mark.parametrize("v", [1, 7, 8, 65, 1003])  # within, at and past the kernel's 8-wide steps
@pytest.mark.parametrize("chunk_rows", [3, 1024])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_c_kernel_gives_cross_entropy_on_fp32_logits(monkeypatch, v, chunk_rows, smoothing):
    """fp32 CPU logits take the C kernel (a spy): the loss, the count of top-1 hits, the plain loss and the gradients
    of x, W and b are F.cross_entropy's on fp64 logits within fp32 rounding, ignored rows included."""
    calls = []
    kernel = cross_entropy.softmax_cross_entropy
    monkeypatch.setattr(cross_entropy, "softmax_cross_entropy", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(cross_entropy, "vocab_major_logits", lambda *_: False)
    x, weight, bias, targets = fp32_inputs(N, v, ignored=(2, 5))
    extras = {"return_correct": True, "label_smoothing": smoothing, "return_nll": True}
    loss, correct, nll = linear_cross_entropy(x, weight, targets, chunk_rows=chunk_rows, bias=bias, **extras)
    exact = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    logits = F.linear(*exact)
    expected = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    assert calls and loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nll.double(), F.cross_entropy(logits, targets), rtol=1e-5, atol=1e-6)
    assert correct.item() == ((logits.argmax(-1) == targets) & (targets != -100)).sum().item()
    got = torch.autograd.grad(loss, (x, weight, bias))
    for mine, want in zip(got, torch.autograd.grad(expected, exact), strict=True):
        torch.testing.assert_close(mine.double(), want, rtol=1e-4, atol=1e-6)


@needs_native
def test_the_c_kernel_and_torchs_softmax_agree(monkeypatch):
    """The same loss and gradients within fp32 rounding whichever forms the softmax (char-small's head's shapes)."""
    monkeypatch.setattr(cross_entropy, "vocab_major_logits", lambda *_: False)
    runs = []
    for native in (True, False):
        monkeypatch.setattr(cross_entropy, "softmax_cross_entropy_runs", lambda native=native: native)
        x, weight, bias, targets = fp32_inputs(768, 65, ignored=(0, 100), seed=3)
        loss = linear_cross_entropy(x, weight, targets, bias=bias)
        runs.append((loss, *torch.autograd.grad(loss, (x, weight, bias))))
    for mine, torchs in zip(*runs, strict=True):
        torch.testing.assert_close(mine, torchs, rtol=1e-5, atol=1e-7)


@needs_native
def test_a_target_outside_the_vocabulary_is_an_index_error():
    x, weight, _, targets = fp32_inputs(4, 9)
    targets[1] = 9
    with pytest.raises(IndexError, match="outside the vocabulary of 9 tokens"):
        linear_cross_entropy(x, weight, targets)


def test_int32_targets_give_the_int64_targets_loss():
    """The C kernel reads int64 targets: others take torch's path, with the same loss (not misread memory)."""
    x, weight, _, targets = fp32_inputs(6, 9)
    torch.testing.assert_close(linear_cross_entropy(x, weight, targets.int()), linear_cross_entropy(x, weight, targets))
