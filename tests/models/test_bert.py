"""BERT and ALBERT against transformers' BertForPreTraining / AlbertForPreTraining with the same weights; ALBERT's
parameter count in closed form and its shared layers; padding, tying and initialization."""

import pytest
import torch

from lmforge.checkpoint import unique_state_dict
from lmforge.config import BertConfig
from lmforge.interop.hf import FAMILIES, to_hf
from lmforge.models import Bert

V, P, T, H, F, E, L = 50, 16, 2, 16, 40, 8, 3  # vocab, positions, segment types, hidden, d_ff, ALBERT's E, layers


def tiny_bert(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, n_layer=L, n_head=2, d_model=H, d_ff=F, max_seq_len=P, dropout=0.0)
    return Bert(BertConfig(**{**cfg, **overrides})).double().eval()


def inputs(b=3, t=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    types = (torch.arange(t) >= t // 2).long().expand(b, t).clone()
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 9:] = 0  # a padded row
    return ids, types, mask


def hf_weights(ours, family):
    """Our weights under transformers' names, from lmforge's one interop table (which these tests check too)."""
    return to_hf(FAMILIES[family], unique_state_dict(ours), head_model=True)


def load_into(hf, weights):
    missing, unexpected = hf.load_state_dict({k: v.detach() for k, v in weights.items()}, strict=False)
    assert not unexpected and all("decoder" in k for k in missing), (missing, unexpected)  # the tied decoder
    return hf.double().eval()


def assert_same_outputs(ours, hf, sentence_logits: str):
    ids, types, mask = inputs()
    with torch.no_grad():
        mlm, sentence = ours(ids, types, mask)
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    real = mask.bool()  # padded positions' outputs are nobody's business
    torch.testing.assert_close(mlm[real], ref.prediction_logits[real], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(sentence, getattr(ref, sentence_logits), atol=1e-10, rtol=1e-10)


def test_bert_matches_transformers_bert_for_pretraining():
    from transformers import BertConfig as HFConfig
    from transformers import BertForPreTraining

    ours = tiny_bert()
    hf = BertForPreTraining(HFConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=2, intermediate_size=F,
        max_position_embeddings=P, type_vocab_size=T, hidden_act="gelu", layer_norm_eps=1e-12,
    ))  # fmt: skip
    assert_same_outputs(ours, load_into(hf, hf_weights(ours, "bert")), "seq_relationship_logits")


def test_albert_matches_transformers_albert_for_pretraining():
    from transformers import AlbertConfig, AlbertForPreTraining

    ours = tiny_bert(embedding_size=E, share_layers=True, sentence_objective="sop")
    hf = AlbertForPreTraining(AlbertConfig(
        vocab_size=V, embedding_size=E, hidden_size=H, num_hidden_layers=L, num_attention_heads=2,
        intermediate_size=F, max_position_embeddings=P, type_vocab_size=T, hidden_act="gelu", layer_norm_eps=1e-12,
    ))  # fmt: skip
    assert_same_outputs(ours, load_into(hf, hf_weights(ours, "albert")), "sop_logits")


def closed_form_count(e, layers, share):
    """Parameters of a BertConfig model with a sentence head, counted from the architecture on paper."""
    embeddings = (V + P + T) * e + 2 * e + (e * H + H if e != H else 0)
    layer = (3 * H * H + 3 * H) + (H * H + H) + 2 * H + (H * F + F) + (F * H + H) + 2 * H
    pooler, mlm_head, sentence_head = H * H + H, (H * e + e) + 2 * e + V, 2 * H + 2
    return embeddings + layer * (1 if share else layers) + pooler + mlm_head + sentence_head


def test_albert_parameter_count_is_the_closed_form_and_below_berts():
    albert = tiny_bert(embedding_size=E, share_layers=True, sentence_objective="sop")
    bert = tiny_bert()
    assert albert.num_parameters() == closed_form_count(E, L, share=True)
    assert bert.num_parameters() == closed_form_count(H, L, share=False)
    assert albert.num_parameters() < bert.num_parameters()
    assert tiny_bert(share_layers=True).num_parameters() == closed_form_count(H, L, share=True)  # sharing alone
    assert tiny_bert(embedding_size=E).num_parameters() == closed_form_count(E, L, share=False)  # factorizing alone


def test_shared_layers_are_one_set_of_tensors_applied_n_times():
    albert = tiny_bert(share_layers=True)
    unshared = tiny_bert(seed=1)
    assert len(albert.encoder.blocks) == 1 and len(unshared.encoder.blocks) == L
    for block in unshared.encoder.blocks:  # every layer a copy of the shared one
        block.load_state_dict(albert.encoder.blocks[0].state_dict())
    for name in ("embeddings", "mlm_head", "pooler", "sentence_head"):
        getattr(unshared, name).load_state_dict(getattr(albert, name).state_dict())
    ids, types, mask = inputs()
    outputs = []
    for model in (albert, unshared):
        mlm, nsp = model(ids, types, mask)
        (mlm[mask.bool()].logsumexp(-1).sum() + nsp.sum()).backward()
        outputs.append(mlm)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-12, rtol=0)
    # one tensor, used by every layer: its gradient is the sum of the per-layer gradients
    for (name, shared), copies in zip(
        albert.encoder.blocks[0].named_parameters(),
        zip(*(b.parameters() for b in unshared.encoder.blocks), strict=True),
        strict=True,
    ):
        torch.testing.assert_close(shared.grad, sum(p.grad for p in copies), atol=1e-12, rtol=1e-9, msg=name)


def test_padding_does_not_change_real_positions():
    model = tiny_bert()
    ids, types, mask = inputs()
    changed = ids.clone()
    changed[1, 9:] = (changed[1, 9:] + 7) % V
    with torch.no_grad():
        a, b = model(ids, types, mask), model(changed, types, mask)
    torch.testing.assert_close(a[0][1, :9], b[0][1, :9], atol=0, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=0, rtol=0)


def test_decoder_is_tied_to_the_word_embeddings_and_init_is_berts():
    model = tiny_bert(vocab_size=3000, d_model=64, sentence_objective="none")
    assert model.pooler is None and model.sentence_head is None and model(torch.tensor([[1, 2]]))[1] is None
    hidden = torch.randn(5, 64, dtype=torch.float64)
    expected = model.mlm_head.transform(hidden) @ model.embeddings.word.weight.T + model.mlm_head.bias
    torch.testing.assert_close(model.mlm_logits(hidden), expected)
    assert model.embeddings.word.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.encoder.blocks[0].ffn.up.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert (model.mlm_head.bias == 0).all() and (model.encoder.blocks[0].ffn.up.bias == 0).all()
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - (3000 + P + T) * 64


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        tiny_bert()(torch.zeros(1, P + 1, dtype=torch.long))
