"""Linear: the same map and gradients as nn.Linear, whichever kernel runs it; apply_kernels puts it in a model."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import onednn_or_skip, tiny_gpt

from lmforge.kernels import apply_kernels
from lmforge.kernels import linear as linear_module
from lmforge.kernels.linear import Linear, linear


def by_hand(x, w, b):
    """y_i = sum_j x_j W_ij + b_i, in float64."""
    y = (x.double()[..., None, :] * w.double()).sum(-1)
    return y if b is None else y + b.double()


def cases():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(24, 10, generator=g), torch.randn(24, generator=g)
    return {
        "2d": (torch.randn(3, 10, generator=g), w, b),
        "3d": (torch.randn(2, 5, 10, generator=g), w, b),
        "one row": (torch.randn(1, 1, 10, generator=g), w, b),
        "no bias": (torch.randn(4, 10, generator=g), w, None),
        "strided input": (torch.randn(4, 7, 10, generator=g)[:, -1], w, b),
        "strided bias": (torch.randn(3, 10, generator=g), w[:12], torch.randn(24, generator=g)[::2]),
        "transposed weight": (torch.randn(3, 24, generator=g), w.t(), None),
        "column-sliced weight": (torch.randn(3, 8, generator=g), w[:, 1:9], b),
    }


@pytest.fixture(params=["default", "onednn"])
def kernel(request, monkeypatch):
    """Each case runs on the kernel this CPU picks and on oneDNN's (AMD: any rows; Intel: 4 to 256 rows)."""
    if request.param == "onednn":
        monkeypatch.setattr(linear_module, "_onednn_linear", onednn_or_skip())
        monkeypatch.setattr(linear_module, "_onednn_rows", (1, 2**62))
    return request.param


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("name", list(cases()))
def test_linear_is_the_affine_map_with_and_without_grad(name):
    x, w, b = cases()[name]
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b).double(), by_hand(x, w, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(linear(x, w, b).double(), by_hand(x, w, b), atol=1e-5, rtol=1e-5)


def test_onednn_runs_on_the_cpus_and_row_counts_it_is_faster_for(monkeypatch):
    vendor = linear_module.cpu_vendor()
    known = (vendor, linear_module.has_avx512()) in linear_module.ONEDNN_ROWS and torch.backends.mkldnn.is_available()
    assert (linear_module._onednn_linear is not None) == known
    monkeypatch.setattr(linear_module, "_onednn_linear", onednn_or_skip())
    monkeypatch.setattr(linear_module, "_onednn_rows", linear_module.ONEDNN_ROWS["GenuineIntel", True])
    w = torch.randn(24, 10)
    with torch.no_grad():
        taken = {rows: linear_module._onednn_applies(torch.randn(rows, 10), w, None) for rows in (1, 2, 4, 256, 257)}
        assert taken == {1: False, 2: False, 4: True, 256: True, 257: False}
        assert linear_module._onednn_applies(torch.randn(2, 4, 10), w, None)  # rows count every leading dimension


def test_training_takes_onednn_with_the_gradients_of_the_affine_map(monkeypatch):
    """The input's, the weight's and the bias's gradients, computed by hand in float64, for contiguous, strided and
    3-D inputs and both orders of the weight-gradient product (wider output side first)."""
    real = onednn_or_skip()
    calls = []
    monkeypatch.setattr(linear_module, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(linear_module, "_onednn_rows", (1, 2**62))
    g = torch.Generator().manual_seed(0)
    for x, (out, inp) in [
        (torch.randn(2, 5, 10, generator=g), (24, 10)),  # wider output: (x^T grad)^T
        (torch.randn(6, 40, generator=g), (8, 40)),  # wider input: grad^T x
        (torch.randn(4, 7, 10, generator=g)[:, -1], (24, 10)),  # a strided input
    ]:
        calls.clear()
        x = x.requires_grad_()
        w = torch.randn(out, inp, generator=g, requires_grad=True)
        b = torch.randn(out, generator=g, requires_grad=True)
        upstream = torch.randn(*x.shape[:-1], out, generator=g)
        (linear(x, w, b) * upstream).sum().backward()
        assert calls, "the training product ran on torch's kernel"
        gy = upstream.double().reshape(-1, out)
        xd = x.detach().double().reshape(-1, inp)
        torch.testing.assert_close(x.grad.double(), (gy @ w.detach().double()).view(x.shape), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w.grad.double(), gy.t() @ xd, atol=1e-5, rtol=1e-5)
        assert w.grad.is_contiguous()  # a transposed product is copied by lmforge's faster copy, not autograd's
        torch.testing.assert_close(b.grad.double(), gy.sum(0), atol=1e-5, rtol=1e-5)
        assert len(calls) == 3, "an eager step runs the bare kernel: forward, input and weight gradients"
    # a backward that is itself recorded (create_graph) takes the operator, so second derivatives hold
    x, w = torch.randn(6, 10, generator=g, requires_grad=True), torch.randn(24, 10, generator=g, requires_grad=True)
    for fn in (linear, torch.nn.functional.linear):
        (grad_w,) = torch.autograd.grad((fn(x, w) ** 2).sum(), w, create_graph=True)
        (second,) = torch.autograd.grad((grad_w**2).sum(), x)
        if fn is linear:
            ours = second
    torch.testing.assert_close(ours, second, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        x, w = torch.randn(2, 10), torch.randn(24, 10)
        assert not linear_module._onednn_applies(x, w, None)
        assert linear(x, w).dtype == torch.bfloat16


def test_onednn_linear_compiles_as_one_opaque_call_with_its_gradient(monkeypatch):
    monkeypatch.setattr(linear_module, "_onednn_linear", onednn_or_skip())
    monkeypatch.setattr(linear_module, "_onednn_rows", (1, 2**62))
    torch.manual_seed(0)
    layer = Linear(10, 24)
    x = torch.randn(3, 10, requires_grad=True)
    compiled = torch.compile(lambda x: torch.nn.functional.gelu(layer(x)).sum(), backend="aot_eager", fullgraph=True)
    with torch.profiler.profile() as profile:
        compiled(x).backward()
    ops = [event.name for event in profile.events()]
    assert "lmforge::transposed" in ops, "the compiled backward copied its transposed operands with torch's copy"
    grads = layer.weight.grad.clone(), x.grad.clone()
    layer.weight.grad = x.grad = None
    torch.nn.functional.gelu(F.linear(x, layer.weight, layer.bias)).sum().backward()
    torch.testing.assert_close(grads, (layer.weight.grad, x.grad), atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("kernel")
def test_linear_module_matches_nn_linear_in_values_gradients_and_state():
    torch.manual_seed(0)
    ours = Linear(10, 24)
    ref = torch.nn.Linear(10, 24)
    ref.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear) and ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 4, 10, requires_grad=True)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    (g,) = torch.autograd.grad(y.square().sum(), ours.weight)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), ref.weight)
    torch.testing.assert_close(g, g_ref)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), F.linear(x, ref.weight, ref.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("kernel")
def test_apply_kernels_keeps_parameters_hooks_logits_tokens_and_training():
    model = tiny_gpt(vocab_size=50, d_model=32, max_seq_len=32)
    assert not any(isinstance(m, Linear) for m in model.modules())  # lmforge.nn builds plain nn.Linear
    plain_model = copy.deepcopy(model)
    idx = torch.randint(50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(idx)
    tokens = model.generate(idx[:, :4], 20, greedy=True)
    params, keys = dict(model.named_parameters()), list(model.state_dict())
    hooked = []
    model.lm_head.register_forward_hook(lambda *_: hooked.append(True))

    assert apply_kernels(apply_kernels(model)) is model  # twice: the second call changes nothing
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 9 and all(type(m) is Linear for m in linears)
    assert all(p is params[name] for name, p in model.named_parameters()) and list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(idx), plain, rtol=1e-5, atol=1e-5)
    assert hooked
    assert torch.equal(model.generate(idx[:, :4], 20, greedy=True), tokens)

    for m in (model, plain_model):  # training: oneDNN's products where they apply, with their gradients
        m.train()
        m(idx).logsumexp(-1).mean().backward()
    for (name, p), q in zip(model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_packed_weight_gives_the_same_products_and_never_outlives_a_training_step(monkeypatch):
    """The packed copy (made after PACK_AFTER calls of 2+ rows in evaluation mode) gives oneDNN's products bit for
    bit, and is dropped by train() and by a forward that records gradients: fused AdamW updates the weight in place
    without bumping its version counter, so a copy kept across a step would be stale."""
    monkeypatch.setattr(linear_module, "_onednn_linear", onednn_or_skip())
    monkeypatch.setattr(linear_module, "_onednn_rows", (1, 2**62))
    monkeypatch.setattr(linear_module, "_packs", True)
    torch.manual_seed(0)
    layer = Linear(16, 40).eval()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    x = torch.randn(8, 16)

    def packed_output() -> torch.Tensor:
        with torch.inference_mode():
            for _ in range(linear_module.PACK_AFTER):
                y = layer(x)
        assert layer._packed is not None
        return y

    for leave_eval_mode in (True, False):
        y = packed_output()
        with torch.inference_mode():
            assert torch.equal(y, linear_module._onednn_linear(x, layer.weight, layer.bias, "none", [], ""))
        if leave_eval_mode:
            layer.train()
        layer(x).square().sum().backward()  # in evaluation mode too: a forward that records gradients
        optimizer.step()
        optimizer.zero_grad()
        assert layer._packed is None and layer._argmax_screen is None
        layer.eval()
        torch.testing.assert_close(packed_output(), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
