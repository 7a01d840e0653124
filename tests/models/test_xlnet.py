"""XLNet's two streams: the query stream never sees its own token, each stream sees exactly the tokens the order puts
before it (the content stream itself too), the memory of a segment is a cache, and the config refuses bad values by
name (logits against transformers are in tests/interop/test_hf_xlnet.py)."""

import pytest
import torch

from lmforge.config.models import XLNetConfig
from lmforge.errors import LmforgeError
from lmforge.models.xlnet import XLNet
from lmforge.objectives.permutation import permutation_batch

V = 50


def small(**kw) -> XLNet:
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, d_model=32, n_layer=2, n_head=4, d_ff=48, dropout=0.0) | kw
    model = XLNet(XLNetConfig(**cfg)).eval()
    with torch.no_grad():  # larger than the 0.02 init, so every dependency shows in the logits
        for name, p in model.named_parameters():
            if ".ln_" not in name:
                p.normal_(0, 0.3)
    return model


def sample(t=8, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (2, t), generator=g)
    return permutation_batch(tokens, predict_fraction_k=k, generator=g)


def streams(model, batch, ids):
    with torch.no_grad():
        query, _ = model(ids, perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"])
        content, _ = model(ids, perm_mask=batch["perm_mask"])
    return query, content


def test_the_query_stream_never_sees_its_own_token():
    model, batch = small(), sample()
    query, content = streams(model, batch, batch["input_ids"])
    first_target = batch["target_mapping"][:, 0].argmax(-1)  # the earliest prediction in each order
    ids = batch["input_ids"].clone()
    ids[torch.arange(2), first_target] = (ids[torch.arange(2), first_target] + 1) % V
    query2, content2 = streams(model, batch, ids)
    assert torch.equal(query2[:, 0], query[:, 0])
    assert (query2[:, 1:] - query[:, 1:]).abs().amax(-1).min() > 1e-3  # later predictions do see it
    rows = content[torch.arange(2), first_target]
    assert (content2[torch.arange(2), first_target] - rows).abs().max() > 1e-3  # its content stream does


def test_each_stream_sees_exactly_the_tokens_before_it_in_the_order():
    model, batch = small(), sample()
    order, ids = batch["order"], batch["input_ids"]
    t = ids.size(1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(t).expand_as(order))
    positions = batch["target_mapping"].argmax(-1)  # (B, num_predict)
    query, content = streams(model, batch, ids)
    for j in range(t):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % V
        query2, content2 = streams(model, batch, changed)
        sees_query = (query2 - query).abs().amax(-1) > 1e-5  # (B, num_predict)
        sees_content = (content2 - content).abs().amax(-1) > 1e-5  # (B, T)
        before = rank[:, j : j + 1] < rank  # (B, T): j precedes position i
        assert torch.equal(sees_query, before.gather(1, positions))
        expected = before.clone()
        expected[:, j] = True
        assert torch.equal(sees_content, expected)


def test_hidden_is_the_content_stream_without_a_permutation():
    model = small()
    ids = torch.randint(0, V, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        hidden, attentions = model.hidden(ids, mask, need_weights=True)
        logits, mems = model(ids, attention_mask=mask)
    assert hidden.shape == (3, 7, 32) and len(attentions) == 2 and attentions[0].shape == (3, 4, 7, 7)
    assert (attentions[0][1, :, :5, 5:] == 0).all()  # real tokens never see padding
    assert torch.allclose(model.lm_head(hidden), logits, atol=1e-5)
    with pytest.raises(ValueError, match="mems"):
        model.hidden(ids, cache=object())


def test_memory_is_a_cache_for_causal_attention():
    model = small(attn_type="uni", mem_len=4)
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        full, _ = model(ids)
        first, mems = model(ids[:, :4])
        second, mems2 = model(ids[:, 4:], mems=mems)
    assert torch.allclose(torch.cat([first, second], 1), full, atol=1e-5)
    assert [m.shape for m in mems2] == [(2, 4, 32)] * 2 and not mems2[0].requires_grad


def test_bidirectional_segments_read_the_memory():
    model = small(mem_len=8)
    ids = torch.randint(0, V, (2, 6))
    alone, mems = model(ids)  # with gradients on: the memory still carries none
    assert not any(m.requires_grad for m in mems)
    after, _ = model(ids, mems=mems)
    assert (alone - after).abs().max() > 1e-3


def test_shared_attention_biases_and_a_grown_vocabulary():
    tied, untied = small(untie_r=False), small()
    assert untied.num_parameters() - tied.num_parameters() == 3 * 32  # three (n_head, d_head) biases, one layer
    assert tied.blocks[1].attn.r_w_bias is tied.blocks[0].attn.r_w_bias
    untied.add_token_rows([V, V + 2])
    assert untied.cfg.vocab_size == V + 3 and untied.lm_head.weight is untied.tok_emb.weight
    with torch.no_grad():
        assert untied(torch.tensor([[1, V + 2]]))[0].shape == (1, 2, V + 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("predict_fraction_k", 1, "predict_fraction_k"), ("mem_len", 0, "mem_len"), ("clamp_len", 0, "clamp_len"),
     ("max_span", 0, "max_span"), ("n_head", 5, "divisible"), ("attn_type", "tri", "attn_type"),
     ("same_length", True, "uni")],
)  # fmt: skip
def test_config_refuses_bad_values_in_one_line(field, value, message):
    with pytest.raises(LmforgeError, match=message) as err:
        XLNetConfig(**({"d_model": 32, "n_head": 4} | {field: value}))
    assert "\n" not in str(err.value)
