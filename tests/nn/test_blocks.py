"""Feed-forward network, Transformer block (pre/post norm, cross-attention) and the encoder/decoder stacks."""

import math

import pytest
import torch

from lmforge.nn import Decoder, Encoder, FeedForward, TransformerBlock, attention_mask

CPU = torch.device("cpu")


def gelu_tanh(x):
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize(
    "activation,act", [("relu", lambda x: max(x, 0.0)), ("gelu", gelu_tanh), ("gelu_exact", gelu_erf)]
)
def test_feed_forward_is_two_linear_maps_around_the_activation(activation, act):
    torch.manual_seed(0)
    d_model, d_ff = 3, 5
    ffn = FeedForward(d_model, d_ff, activation).double()
    w1, b1, w2, b2 = ffn.up.weight, ffn.up.bias, ffn.down.weight, ffn.down.bias
    x = torch.randn(2, 4, d_model, dtype=torch.float64)
    y = ffn(x)
    for b in range(2):
        for t in range(4):
            hidden = [act(sum(w1[j, i].item() * x[b, t, i].item() for i in range(d_model)) + b1[j].item())
                      for j in range(d_ff)]  # fmt: skip
            for o in range(d_model):
                expected = sum(w2[o, j].item() * hidden[j] for j in range(d_ff)) + b2[o].item()
                assert y[b, t, o].item() == pytest.approx(expected, abs=1e-12)


def test_gated_feed_forward_multiplies_the_activated_gate_by_the_linear_half():
    torch.manual_seed(0)
    ffn = FeedForward(3, 5, "gelu", bias=False, gated=True).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        hidden = (x @ ffn.gate.weight.T).apply_(gelu_tanh) * (x @ ffn.up.weight.T)
        y = ffn(x)
    assert torch.allclose(y, hidden @ ffn.down.weight.T, atol=1e-12)
    assert FeedForward(3, 5).gate is None


def test_feed_forward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        FeedForward(4, 8, "swish")


def layer_norm(x, norm):
    """(x - mean) / sqrt(var + eps) * gamma + beta, with the biased variance, written out."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def random_block(norm, cross_attention=False, d_model=8, seed=0):
    torch.manual_seed(seed)
    block = TransformerBlock(d_model, 2, 16, norm=norm, cross_attention=cross_attention).double()
    for ln in (block.ln_attn, block.ln_ffn, block.ln_cross):
        if ln is not None:  # non-trivial gamma/beta so a misplaced LayerNorm shows
            torch.nn.init.normal_(ln.weight, 1.0, 0.5)
            torch.nn.init.normal_(ln.bias, 0.0, 0.5)
    return block


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_places_layer_norm_as_the_formula_says(norm):
    block = random_block(norm).eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = attention_mask(5, 5, True, None, CPU)

    def attn(h):
        return block.attn(h, mask)[0]

    if norm == "pre":  # x + F(LN(x))
        h = x + attn(layer_norm(x, block.ln_attn))
        expected = h + block.ffn(layer_norm(h, block.ln_ffn))
    else:  # LN(x + F(x))
        h = layer_norm(x + attn(x), block.ln_attn)
        expected = layer_norm(h + block.ffn(h), block.ln_ffn)
    y, _ = block(x, mask)
    torch.testing.assert_close(y, expected)


def test_pre_and_post_norm_differ():
    pre, post = random_block("pre"), random_block("post")
    post.load_state_dict(pre.state_dict())
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    assert not torch.allclose(pre(x)[0], post(x)[0])


def test_block_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        TransformerBlock(8, 2, 16, norm="sandwich")


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cross_attention_block_formula(norm):
    block = random_block(norm, cross_attention=True).eval()
    x, context = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64)
    mask = attention_mask(3, 3, True, None, CPU)
    if norm == "pre":
        h = x + block.attn(layer_norm(x, block.ln_attn), mask)[0]
        h = h + block.cross(layer_norm(h, block.ln_cross), context=context)[0]
        expected = h + block.ffn(layer_norm(h, block.ln_ffn))
    else:
        h = layer_norm(x + block.attn(x, mask)[0], block.ln_attn)
        h = layer_norm(h + block.cross(h, context=context)[0], block.ln_cross)
        expected = layer_norm(h + block.ffn(h), block.ln_ffn)
    torch.testing.assert_close(block(x, mask, context)[0], expected)


def test_cross_attention_block_needs_context():
    block = random_block("pre", cross_attention=True)
    with pytest.raises(ValueError, match="context"):
        block(torch.randn(1, 2, 8, dtype=torch.float64))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_decoder_reads_context_but_not_its_padding(norm):
    torch.manual_seed(0)
    decoder = Decoder(2, 8, norm=norm, n_head=2, d_ff=16, cross_attention=True).double().eval()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    context = torch.randn(2, 5, 8, dtype=torch.float64)
    padding = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    y, _ = decoder(x, context=context, context_padding_mask=padding)

    changed = context.clone()
    changed[0, 0] = torch.randn(8, dtype=torch.float64)  # a real context position
    assert not torch.allclose(decoder(x, context=changed, context_padding_mask=padding)[0][0], y[0])

    changed = context.clone()
    changed[~padding] = torch.randn(int((~padding).sum()), 8, dtype=torch.float64) * 10  # padded positions only
    torch.testing.assert_close(decoder(x, context=changed, context_padding_mask=padding)[0], y, rtol=0, atol=0)


def test_encoder_is_bidirectional_and_decoder_is_causal():
    torch.manual_seed(0)
    kwargs = dict(n_head=2, d_ff=16)
    encoder, decoder = Encoder(2, 8, **kwargs).double(), Decoder(2, 8, **kwargs).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    changed = x.clone()
    changed[0, -1] = torch.randn(8, dtype=torch.float64)  # not a constant shift, which LayerNorm would erase
    assert not torch.allclose(encoder(x)[0][0, 0], encoder(changed)[0][0, 0])  # position 0 sees the last token
    y, y_changed = decoder(x)[0], decoder(changed)[0]
    torch.testing.assert_close(y[0, :-1], y_changed[0, :-1], rtol=0, atol=0)  # earlier positions do not
    assert not torch.allclose(y[0, -1], y_changed[0, -1])


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_stack_ends_with_a_layer_norm_only_when_pre_norm(norm):
    torch.manual_seed(0)
    stack = Encoder(2, 8, norm=norm, n_head=2, d_ff=16).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    h = x
    for block in stack.blocks:
        h = block(h)[0]
    expected = layer_norm(h, stack.ln_final) if norm == "pre" else h
    torch.testing.assert_close(stack(x)[0], expected)


def test_shared_layers_apply_one_block_n_times():
    torch.manual_seed(0)
    stack = Encoder(3, 8, norm="post", share_layers=True, n_head=2, d_ff=16).double()
    assert len(stack.blocks) == 1 and stack.n_layer == 3
    assert sum(p.numel() for p in stack.parameters()) == sum(p.numel() for p in stack.blocks[0].parameters())
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    h = x
    for _ in range(3):
        h = stack.blocks[0](h)[0]
    torch.testing.assert_close(stack(x)[0], h, rtol=0, atol=0)
    attentions = stack(x, need_weights=True)[1]
    assert len(attentions) == 3 and not torch.allclose(attentions[0], attentions[2])


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("cross_attention", [False, True])
def test_block_gradcheck(norm, cross_attention):
    block = random_block(norm, cross_attention, d_model=4)
    names = [n for n, _ in block.named_parameters()]
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    context = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True) if cross_attention else None
    mask = attention_mask(3, 3, True, torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.bool), CPU)

    def f(x, context, *weights):
        return torch.func.functional_call(block, dict(zip(names, weights, strict=True)), (x, mask, context))[0]

    params = [p.detach().requires_grad_() for p in block.parameters()]
    assert torch.autograd.gradcheck(f, (x, context, *params), fast_mode=True)


def test_packed_stack_equals_padded_at_real_tokens():
    """A padded batch runs packed (padding left out of the linear layers); real tokens see the same result."""
    from lmforge.nn import Decoder, Encoder

    torch.manual_seed(0)
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = mask[2, 2:] = False
    for stack in (Encoder(2, 16, norm="post", n_head=2, d_ff=32), Decoder(2, 16, n_head=2, d_ff=32)):
        packed, _ = stack(x, mask)
        padded, _ = stack(x, mask, need_weights=True)  # attention weights keep the padded path
        torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)
        assert (packed[~mask] == 0).all()
