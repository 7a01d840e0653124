"""A pre-norm block's training step as one autograd Function (lmforge.kernels.block): the modules' outputs and
gradients, bit for bit where both run oneDNN's products, and the modules' path wherever the Function does not apply."""

import copy

import pytest
import torch

from lmforge.config import GPTConfig
from lmforge.kernels import apply_kernels, native
from lmforge.kernels import block as block_module
from lmforge.kernels import linear as linear_module
from lmforge.kernels.block import Block
from lmforge.models import GPT
from lmforge.nn import KVCache, TransformerBlock, attention_mask

needs_kernel = pytest.mark.skipif(not native.causal_attention_runs(), reason="no AVX2 or no C compiler here")
CPU = torch.device("cpu")


def spy(monkeypatch) -> list:
    calls = []
    real = block_module._Block.apply
    monkeypatch.setattr(block_module._Block, "apply", lambda *a: calls.append(1) or real(*a))
    return calls


def torch_kernels(monkeypatch) -> None:
    """The fused block on torch's GELU and layer norm, not lmforge's C kernels: the modules' own arithmetic."""
    monkeypatch.setattr(block_module, "gelu_runs", lambda: False)
    monkeypatch.setattr(block_module, "layer_norm_runs", lambda: False)


def twins(**model) -> tuple[GPT, GPT]:
    """A GPT after apply_kernels, and its copy with the blocks turned back into TransformerBlock."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=65, n_layer=2, n_head=4, d_model=64, max_seq_len=32, position="rotary") | model
    fused = apply_kernels(GPT(GPTConfig(**cfg)))
    plain = copy.deepcopy(fused)
    for layer in plain.decoder.blocks:
        layer.__class__ = TransformerBlock
    return fused, plain


def step(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    model.train()
    loss = model(idx).logsumexp(-1).mean()
    loss.backward()
    return loss


def assert_same_gradients(fused: GPT, plain: GPT, exact: bool) -> None:
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None, name
        elif exact:
            assert torch.equal(p.grad, q.grad), name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


IDX = torch.randint(65, (3, 32), generator=torch.Generator().manual_seed(1))


@needs_kernel
@pytest.mark.parametrize(
    "model", [{}, {"position": "learned"}, {"bias": False}, {"activation": "gelu_exact"}, {"activation": "relu"},
              {"n_head": 2, "d_model": 48}]
)  # fmt: skip
def test_the_fused_step_is_the_modules_step(model, monkeypatch):
    """Rotary and learned positions, with and without biases, each activation (exact GELU by torch's kernel here):
    the Function runs in both blocks, and the loss and every gradient are the modules' (bit for bit where the
    products are oneDNN's in both)."""
    torch_kernels(monkeypatch)
    fused, plain = twins(**model)
    assert [type(m) for m in fused.decoder.blocks] == [Block, Block]
    calls = spy(monkeypatch)
    loss = step(fused, IDX)
    assert len(calls) == 2
    expected = step(plain, IDX)
    exact = linear_module._onednn_applies(torch.zeros(IDX.numel(), 64), torch.zeros(8, 64), None)
    assert torch.equal(loss, expected) if exact else torch.allclose(loss, expected, rtol=1e-6)
    assert_same_gradients(fused, plain, exact)


@needs_kernel
@pytest.mark.skipif(not (native.gelu_runs() and native.layer_norm_runs()), reason="no AVX2 or no C compiler here")
@pytest.mark.parametrize("activation", ["gelu_exact", "gelu"])
def test_lmforges_gelu_and_layer_norm_keep_the_gradients(activation, monkeypatch):
    """Exact GELU or its tanh form and its slope (kept for the backward in place of the input) and the layer norms by
    kernels.native: the loss and gradients within fp32 rounding of the modules' (torch's GELU and lmforge's are both
    fp32 approximations; the norms' sums run in another order)."""
    norms = []
    real_norm = block_module.add_layer_norm
    monkeypatch.setattr(block_module, "add_layer_norm", lambda *a: norms.append(1) or real_norm(*a))
    fused, plain = twins(activation=activation)
    calls = []
    real = block_module.gelu_and_slope
    monkeypatch.setattr(block_module, "gelu_and_slope", lambda *a: calls.append(a[1:]) or real(*a))
    torch.testing.assert_close(step(fused, IDX), step(plain, IDX), rtol=1e-6, atol=1e-6)
    assert calls == [() if activation == "gelu_exact" else ("tanh",)] * 2
    assert len(norms) == 4
    assert_same_gradients(fused, plain, exact=False)


@needs_kernel
def test_torchs_products_take_their_own_gradients(monkeypatch):
    """Where kernels.linear takes torch's product (an Intel CPU's training rows), the backward takes torch's
    formulas: the modules' gradients within fp32 rounding."""
    monkeypatch.setattr(linear_module, "_onednn_linear", None)
    fused, plain = twins()
    calls = spy(monkeypatch)
    torch.testing.assert_close(step(fused, IDX), step(plain, IDX))
    assert len(calls) == 2
    assert_same_gradients(fused, plain, exact=False)


@needs_kernel
@pytest.mark.parametrize("lmforges", [False, True])
def test_frozen_parameters_get_no_gradient(lmforges, monkeypatch):
    """Frozen embeddings (so the first block's input needs no gradient) and a frozen layer norm and product: None for
    those, the modules' gradients for the rest; with torch's GELU and layer norms (bit for bit on oneDNN's products)
    and with lmforge's."""
    if not lmforges:
        torch_kernels(monkeypatch)
    fused, plain = twins()
    for model in (fused, plain):
        for p in (model.tok_emb.weight, model.decoder.blocks[0].ln_attn.weight, model.decoder.blocks[1].ffn.up.bias):
            p.requires_grad_(False)
    calls = spy(monkeypatch)
    step(fused, IDX)
    step(plain, IDX)
    assert len(calls) == 2
    assert fused.decoder.blocks[0].ln_attn.weight.grad is None
    assert fused.decoder.blocks[0].ln_attn.bias.grad is not None
    exact = linear_module._onednn_applies(torch.zeros(IDX.numel(), 64), torch.zeros(8, 64), None)
    assert_same_gradients(fused, plain, exact and not lmforges)


@needs_kernel
@pytest.mark.parametrize(
    "case", ["plain", "eval_dropout", "no_grad", "frozen", "dropout", "hook", "weights", "cache", "post_norm", "gated",
             "rms_norm", "padding", "other_ffn"]
)  # fmt: skip
def test_the_function_runs_only_where_it_computes_the_modules_forward(case, monkeypatch):
    """A plain block and one with dropout in evaluation mode run the Function, with the same outputs. Evaluation
    without gradients or with nothing to differentiate, dropout in training, a hook on one of the block's modules,
    attention weights, a KV cache, a post-norm, gated or RMS-normed block (T5's, without the biases the Function
    reads), padding and a feed-forward whose activation was replaced: TransformerBlock's forward, with the same
    outputs."""
    torch_kernels(monkeypatch)
    torch.manual_seed(0)
    options = {"dropout": 0.1 if "dropout" in case else 0.0, "norm": "post" if case == "post_norm" else "pre",
               "gated": case == "gated", "norm_type": "rms" if case == "rms_norm" else "layer"}  # fmt: skip
    layer = Block(64, 4, 256, activation="gelu_exact", **options)
    apply_kernels(layer)
    if case == "other_ffn":
        layer.ffn.act = torch.nn.functional.silu
    layer.train(case != "eval_dropout")
    if case == "frozen":
        layer.requires_grad_(False)
    plain = copy.deepcopy(layer)
    plain.__class__ = TransformerBlock
    x = torch.randn(2, 16, 64, requires_grad=case != "frozen")
    mask = attention_mask(16, 16, True, None, CPU)
    kwargs = {}
    if case == "padding":
        mask = attention_mask(16, 16, True, torch.tensor([[True] * 16, [True] * 13 + [False] * 3]), CPU)
    if case == "weights":
        kwargs["need_weights"] = True
    seen = []
    if case == "hook":
        for module in (layer, plain):
            module.ffn.up.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    calls = spy(monkeypatch)
    results = []
    for module in (layer, plain):
        if case == "cache":
            kwargs["cache"] = KVCache(1, 2, 4, 16, 16, torch.float32, CPU)
        torch.manual_seed(1)
        with torch.set_grad_enabled(case != "no_grad"):
            results.append(module(x, mask, **kwargs))
    assert len(calls) == (1 if case in ("plain", "eval_dropout") else 0)
    assert torch.equal(results[0][0], results[1][0])
    assert len(seen) == (2 if case == "hook" else 0)


def test_apply_kernels_keeps_the_blocks_parameters_and_keys():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=4, d_model=64, max_seq_len=32))
    keys, values = list(model.state_dict()), [v.clone() for v in model.state_dict().values()]
    apply_kernels(apply_kernels(model))
    assert [type(m) for m in model.decoder.blocks] == [Block, Block]
    assert list(model.state_dict()) == keys
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), values, strict=True))
