"""Causal self-attention in one C kernel (lmforge.kernels.attention): the formula and its gradient in fp64, the same
outputs and gradients as lmforge.nn's attention in a model, and torch's path wherever the kernel does not apply."""

import copy
import math
import subprocess
import sys

import pytest
import torch

from lmforge.config import GPTConfig
from lmforge.kernels import apply_kernels, native
from lmforge.kernels import attention as attention_module
from lmforge.kernels import block as block_module
from lmforge.kernels.attention import Attention, is_causal
from lmforge.kernels.cpu import has_avx2, is_x86
from lmforge.models import GPT
from lmforge.nn import KVCache, MultiHeadAttention, attention_mask
from lmforge.nn.positions import RotaryEmbedding

CPU = torch.device("cpu")
needs_kernel = pytest.mark.skipif(not native.causal_attention_runs(), reason="no AVX2 or no C compiler here")


def reference(qkv: torch.Tensor, heads: int, rope: RotaryEmbedding | None) -> torch.Tensor:
    """The heads' outputs side by side, in fp64: per-head scores, the causal mask, softmax, sum of values."""
    b, t, width = qkv.shape
    d = width // (3 * heads)
    q, k, v = (z.view(b, t, heads, d).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
    if rope is not None:
        cos2, sin2 = rope.cos2[:t].double(), rope.sin2[:t].double()
        q, k = ((z * cos2 + torch.cat(z.chunk(2, dim=-1)[::-1], dim=-1) * sin2) for z in (q, k))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), -math.inf)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, heads * d)


def spy(monkeypatch) -> list:
    """The kernel's calls, through the attention layer or a fused block (kernels.block)."""
    calls = []
    real = attention_module.causal_attention
    for module in (attention_module, block_module):
        monkeypatch.setattr(module, "causal_attention", lambda *a: calls.append(1) or real(*a))
    return calls


@needs_kernel
@pytest.mark.parametrize(
    "b, t, heads, d, rotary",
    [(3, 64, 4, 32, True), (2, 13, 2, 16, True), (1, 100, 2, 64, True), (2, 33, 3, 16, False), (2, 70, 2, 40, True),
     (1, 2, 1, 8, True), (2, 256, 1, 64, False)],
)  # fmt: skip
def test_the_kernel_is_the_formula_and_its_gradient(b, t, heads, d, rotary):
    """Outputs and gradients against fp64's, positions on and off the kernel's 8- and 32-wide steps, with and
    without rotary tables: within fp32 rounding (torch's own fp32 attention is as far)."""
    g = torch.Generator().manual_seed(t)
    qkv = torch.randn(b, t, 3 * heads * d, generator=g) * 2
    grad_y = torch.randn(b, t, heads * d, generator=g)
    rope = RotaryEmbedding(d, t) if rotary else None
    tables = (rope.cos2[:t], rope.sin2[:t]) if rotary else (None, None)

    y, lse = native.causal_attention(qkv, *tables, heads, 1 / math.sqrt(d))
    grad = native.causal_attention_backward(qkv, *tables, y, grad_y, lse, heads, 1 / math.sqrt(d))
    exact = qkv.double().requires_grad_()
    expected = reference(exact, heads, rope)
    expected.backward(grad_y.double())

    torch.testing.assert_close(y.double(), expected, rtol=0, atol=2e-5)
    torch.testing.assert_close(grad.double(), exact.grad, rtol=0, atol=5e-5)
    assert exact.grad.abs().max() > 1  # gradients of a real size, so the tolerance means something


@needs_kernel
def test_a_nan_reaches_the_outputs_that_attend_to_it():
    """A NaN key at position 3 of one head makes every column of that head's outputs NaN from query 3 on, and a NaN
    value the one column it sits in, as the formula says, so the training loop's non-finite guard sees it; the other
    head and earlier queries stay finite (query 2, read in a pair with query 3, included)."""
    for column, nan_at in ((16 + 5, (slice(3, None), slice(0, 8))), (32 + 5, (slice(3, None), 5))):
        qkv = torch.randn(1, 10, 3 * 2 * 8)
        qkv[0, 3, column] = float("nan")  # head 0's key (then value) at position 3, its column 5
        y, _ = native.causal_attention(qkv, None, None, 2, 1 / math.sqrt(8))
        expected = torch.zeros(10, 16, dtype=torch.bool)
        expected[nan_at] = True
        assert torch.equal(y[0].isnan(), expected)


@needs_kernel
def test_results_do_not_depend_on_the_number_of_threads():
    g = torch.Generator().manual_seed(0)
    qkv, grad_y = torch.randn(4, 50, 3 * 96, generator=g), torch.randn(4, 50, 96, generator=g)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y, lse = native.causal_attention(qkv, None, None, 3, 0.2)
            outputs.append((y, native.causal_attention_backward(qkv, None, None, y, grad_y, lse, 3, 0.2)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for other in outputs[1:] for a, b in zip(outputs[0], other, strict=True))


@needs_kernel
def test_scratch_memory_it_cannot_have_is_an_error_not_a_crash(monkeypatch):
    """The kernels ask for their scratch before writing anything and answer 1 where they cannot have it (here: for
    2^31 threads; in a process of its own, since glibc moves a thread whose allocation failed to another arena),
    which causal_attention turns into a MemoryError."""
    script = (
        "import torch\n"
        "from lmforge.kernels import native\n"
        "qkv, y, lse = torch.randn(1, 64, 96), torch.zeros(1, 64, 32), torch.zeros(1, 1, 64)\n"
        "status = native._library().f32_causal_attention(\n"
        "    qkv.data_ptr(), None, None, y.data_ptr(), lse.data_ptr(), 1, 64, 1, 32, 0.2, 2**31 - 1)\n"
        "print(status, bool(y.any() or lse.any()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "False"], done.stderr

    class Refusing:
        f32_causal_attention = f32_causal_attention_backward = staticmethod(lambda *args: 1)

    monkeypatch.setattr(native, "_library", Refusing)
    qkv = torch.randn(1, 8, 24)
    with pytest.raises(MemoryError, match="scratch memory"):
        native.causal_attention(qkv, None, None, 1, 0.2)
    with pytest.raises(MemoryError, match="scratch memory"):
        native.causal_attention_backward(qkv, None, None, qkv[..., :8], qkv[..., :8], qkv[0, :1, :8], 1, 0.2)


@needs_kernel
@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_a_model_after_apply_kernels_gives_the_same_outputs_and_gradients(position, monkeypatch):
    """A GPT's attention layers become kernels.attention.Attention (parameters and state-dict keys kept), the kernel
    runs forward and backward, and logits and every gradient agree with the plain model's."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig(vocab_size=65, n_layer=2, n_head=4, d_model=128, max_seq_len=64, position=position))
    model = copy.deepcopy(plain)
    keys = list(model.state_dict())
    calls = spy(monkeypatch)
    apply_kernels(apply_kernels(model))
    assert [type(m) for m in model.modules() if isinstance(m, MultiHeadAttention)] == [Attention, Attention]
    assert list(model.state_dict()) == keys
    idx = torch.randint(65, (3, 64), generator=torch.Generator().manual_seed(1))
    for m in (model, plain):
        m.train()
        m(idx).logsumexp(-1).mean().backward()
    assert len(calls) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(idx), plain(idx), rtol=1e-5, atol=1e-5)
    assert len(calls) == 4  # evaluation too
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@needs_kernel
@pytest.mark.parametrize(
    "case", ["padding", "weights", "cache", "dropout", "head_size", "long", "bf16", "one_position", "bidirectional"]
)
def test_attention_the_kernel_does_not_cover_takes_torchs_path(case, monkeypatch):
    """Padding, attention weights, a KV cache, dropout in training, heads not a multiple of 8 columns, rows longer
    than MAX_CELLS allows, autocast, a single position and unmasked (encoder) attention: torch's path, unchanged."""
    d_model, n_head, t = (48, 4, 16) if case == "head_size" else (64, 2, 16)
    if case == "long":
        t = attention_module.MAX_CELLS // (d_model // n_head) + 1
    if case == "one_position":
        t = 1
    torch.manual_seed(0)
    layer = MultiHeadAttention(d_model, n_head, dropout=0.5 if case == "dropout" else 0.0)
    plain = copy.deepcopy(layer)
    layer.__class__ = Attention
    x = torch.randn(2, t, d_model)
    mask = attention_mask(t, t, case != "bidirectional", None, CPU)
    kwargs = {"mask": mask}
    if case == "padding":
        kwargs["mask"] = attention_mask(t, t, True, torch.tensor([[True] * t, [True] * (t - 3) + [False] * 3]), CPU)
    if case == "weights":
        kwargs["need_weights"] = True
    if case == "cache":
        kwargs["cache"] = KVCache(1, 2, n_head, t, d_model // n_head, torch.float32, CPU)
    calls = spy(monkeypatch)
    for module in (layer, plain):
        module.train(case == "dropout")
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16"):
        got = layer(x, **kwargs)
        if case == "cache":
            kwargs["cache"] = KVCache(1, 2, n_head, t, d_model // n_head, torch.float32, CPU)
        torch.manual_seed(1)
        expected = plain(x, **kwargs)
    assert not calls
    for a, b in zip(got, expected, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_only_the_plain_causal_mask_counts_as_causal():
    assert is_causal(attention_mask(7, 7, True, None, CPU), 7)
    assert not is_causal(attention_mask(7, 7, True, None, CPU), 6)
    assert not is_causal(None, 7)
    assert not is_causal(attention_mask(1, 7, True, None, CPU), 1)  # a decoding step after a cache
    assert not is_causal(attention_mask(7, 7, True, torch.tensor([[True] * 6 + [False]]), CPU), 7)  # padding
    assert not is_causal(torch.ones(1, 1, 7, 7, dtype=torch.bool), 7)


def test_the_kernel_stays_off_when_asked_or_without_avx2(monkeypatch):
    monkeypatch.setenv("LMFORGE_NATIVE_KERNELS", "0")
    assert not native.causal_attention_runs.__wrapped__()
    monkeypatch.delenv("LMFORGE_NATIVE_KERNELS")
    monkeypatch.setattr(native, "has_avx2", lambda: False)
    assert not native.causal_attention_runs.__wrapped__()
    monkeypatch.setattr(native, "has_avx2", has_avx2)
    assert native.causal_attention_runs.__wrapped__() == (is_x86() and has_avx2() and native.f32_transpose_runs())
