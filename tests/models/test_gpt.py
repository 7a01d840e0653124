"""GPT: causality, KV-cache parity, padding, weight tying, parameter count and GPT-2 initialization."""

import math

import pytest
import torch
from helpers import tiny_gpt

POSITIONS = ["learned", "sinusoidal", "rotary"]


def tokens(b, t, seed=1, vocab=23):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_logits_at_t_do_not_see_later_tokens(position, norm):
    model = tiny_gpt(position=position, norm=norm)
    idx = tokens(2, 12)
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1 + tokens(2, 6, seed=2, vocab=20)) % 23  # every later token differs
    with torch.no_grad():
        logits, logits_changed = model(idx), model(changed)
    torch.testing.assert_close(logits[:, :6], logits_changed[:, :6], rtol=0, atol=0)
    assert not torch.allclose(logits[:, 6:], logits_changed[:, 6:])


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_kv_cache_decoding_equals_full_forward(position, norm):
    model = tiny_gpt(position=position, norm=norm)
    idx = tokens(2, 14)
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2)
        prefill = model(idx[:, :5], cache=cache)
        torch.testing.assert_close(prefill, full[:, :5], atol=1e-5, rtol=0)
        for t in range(5, 11):  # one token at a time
            torch.testing.assert_close(model(idx[:, t : t + 1], cache=cache)[:, 0], full[:, t], atol=1e-5, rtol=0)
        chunk = model(idx[:, 11:14], cache=cache)  # several tokens after a cache: bottom-right causal mask
        torch.testing.assert_close(chunk, full[:, 11:14], atol=1e-5, rtol=0)
    assert cache.length == 14


@pytest.mark.parametrize("position", POSITIONS)
def test_kv_cache_with_left_padding_equals_full_forward(position):
    model = tiny_gpt(position=position)
    idx = tokens(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False  # the second prompt is 3 tokens shorter, padded on the left
    with torch.no_grad():
        full = model(idx, attention_mask=mask)
        cache = model.new_cache(2)
        model(idx[:, :6], attention_mask=mask[:, :6], cache=cache)
        for t in range(6, 10):
            step = model(idx[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache)[:, 0]
            torch.testing.assert_close(step, full[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", POSITIONS)
def test_padded_tokens_get_zero_attention(position):
    model = tiny_gpt(position=position)
    idx = tokens(2, 7)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)  # right, left padding
    with torch.no_grad():
        hidden, attentions = model.hidden(idx, mask, need_weights=True)
    assert torch.isfinite(hidden).all()
    assert len(attentions) == model.cfg.n_layer
    for weights in attentions:  # (B, n_head, T, T)
        for b in range(2):
            real = mask[b]
            rows = weights[b][:, real]
            assert (rows[..., ~real] == 0).all()
            torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]))
    # and a padded token's id does not matter to the real positions
    changed = idx.clone()
    changed[~mask] = (changed[~mask] + 5) % 23
    with torch.no_grad():
        torch.testing.assert_close(model(changed, mask)[mask], model(idx, mask)[mask], atol=1e-6, rtol=0)


def test_tied_embeddings_share_storage():
    model = tiny_gpt(gpt2_init=True, tie_embeddings=True)
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    untied = tiny_gpt(gpt2_init=True, tie_embeddings=False)
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    assert not torch.equal(untied.lm_head.weight, untied.tok_emb.weight)


def expected_parameters(V, T, d, L, d_ff, position, tie, bias):
    """GPT-2 layout by formula: per layer QKV 3d^2, output d^2, FFN 2 d d_ff, two LayerNorms; then embeddings."""
    per_layer = 4 * d * d + 2 * d * d_ff
    per_layer += (3 * d + d + d_ff + d) if bias else 0  # linear biases
    per_layer += 2 * (2 * d if bias else d)  # LayerNorm gain (and bias)
    n = L * per_layer + (2 * d if bias else d)  # + final LayerNorm
    n += V * d + (T * d if position == "learned" else 0) + (0 if tie else V * d)
    return n


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": False},
        {"position": "sinusoidal"},
        {"position": "rotary", "bias": False},
        {"d_ff": 24, "n_layer": 3},
    ],
)
def test_num_parameters_has_closed_form(overrides):
    model = tiny_gpt(**overrides)
    cfg = model.cfg
    expected = expected_parameters(
        cfg.vocab_size, cfg.max_seq_len, cfg.d_model, cfg.n_layer, cfg.d_ff, cfg.position, cfg.tie_embeddings, cfg.bias
    )
    assert model.num_parameters() == expected
    embeddings = cfg.vocab_size * cfg.d_model + (cfg.max_seq_len * cfg.d_model if cfg.position == "learned" else 0)
    assert model.num_parameters(exclude_embeddings=True) == expected - embeddings


def test_gpt2_layout_is_12_d_squared_per_layer():
    d, L = 16, 2
    model = tiny_gpt(n_layer=L, d_model=d)
    V, T = model.cfg.vocab_size, model.cfg.max_seq_len
    assert model.num_parameters() == 12 * d * d * L + 13 * d * L + V * d + T * d + 2 * d


def test_gpt2_initialization():
    model = tiny_gpt(gpt2_init=True, n_layer=4, d_model=64, n_head=4, vocab_size=512, max_seq_len=256)
    residual = 0.02 / math.sqrt(2 * 4)  # residual projections scaled by 1/sqrt(2 n_layer)
    stds = {"attn.out.weight": residual, "ffn.down.weight": residual, "qkv.weight": 0.02, "ffn.up.weight": 0.02,
            "tok_emb.weight": 0.02, "pos_emb.weight": 0.01}  # fmt: skip
    for name, p in model.named_parameters():
        std = next((std for suffix, std in stds.items() if name.endswith(suffix)), None)
        if std is not None:  # normal(0, std)
            assert p.std().item() == pytest.approx(std, rel=0.1), name
            assert abs(p.mean().item()) < std / 10, name
        elif name.endswith(".bias"):  # linear and LayerNorm biases
            assert (p == 0).all(), name
        else:
            assert ".ln_" in name and (p == 1).all(), name


def test_sequences_longer_than_max_seq_len_raise():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(1, 17))
    cache = model.new_cache(1)
    with torch.no_grad():
        model(tokens(1, 16), cache=cache)
        with pytest.raises(ValueError, match="max_seq_len"):
            model(tokens(1, 1), cache=cache)
