"""Permutation LM batches: the last 1/K of a random order is predicted, the masks follow the order, spans are runs of
neighbours, a seed gives the same batch, and the loss is the cross-entropy of the query stream's predictions."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.config.models import XLNetConfig
from lmforge.errors import LmforgeError
from lmforge.models.xlnet import XLNet
from lmforge.objectives.permutation import num_predict, permutation_batch, permutation_lm_loss


def batch(b=4, t=24, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 100, (b, t), generator=g)
    return tokens, permutation_batch(tokens, generator=g, **kw)


def runs(positions: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive positions."""
    lengths, previous = [], None
    for p in positions.sort().values.tolist():
        if previous is not None and p == previous + 1:
            lengths[-1] += 1
        else:
            lengths.append(1)
        previous = p
    return lengths


@pytest.mark.parametrize("span_prediction", [False, True])
@pytest.mark.parametrize("k", [2, 6])
def test_the_last_one_in_k_of_the_order_is_predicted_and_labelled(k, span_prediction):
    tokens, out = batch(predict_fraction_k=k, span_prediction=span_prediction)
    t, n = 24, 24 // k
    assert num_predict(t, k) == n and out["target_mapping"].shape == (4, n, t) and out["labels"].shape == (4, n)
    order = out["order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(t).expand(4, t))  # a permutation of the positions
    positions = out["target_mapping"].argmax(-1)
    assert torch.equal(out["target_mapping"].sum(-1), torch.ones(4, n))  # one-hot rows
    assert torch.equal(positions, order[:, t - n :])  # the predictions, in the order's sequence
    assert torch.equal(out["labels"], tokens.gather(1, positions)) and torch.equal(out["input_ids"], tokens)


def test_perm_mask_hides_every_position_not_before_the_query():
    _, out = batch()
    order, mask = out["order"], out["perm_mask"]
    for b in range(4):
        for a, i in enumerate(order[b].tolist()):
            visible = set(order[b, :a].tolist())
            assert {j for j in range(24) if mask[b, i, j] == 0} == visible


def test_span_prediction_predicts_runs_of_neighbours():
    _, spans = batch(b=16, t=64, span_prediction=True, max_span=5)
    _, tokens = batch(b=16, t=64)
    n = 64 // 6

    def mean_run(out):
        lengths = [r for row in out["target_mapping"].argmax(-1) for r in runs(row)]
        return sum(lengths) / len(lengths)

    assert mean_run(spans) > 1.6 > 1.3 > mean_run(tokens)  # 1/L-weighted spans of 1..5 average 2.2 tokens
    assert all(len(set(row.tolist())) == n for row in spans["target_mapping"].argmax(-1))
    _, single = batch(b=16, t=64, span_prediction=True, max_span=1)
    assert 1.3 > mean_run(single)


def test_a_seed_gives_the_same_batch():
    for span_prediction in (False, True):
        _, a = batch(seed=3, span_prediction=span_prediction)
        _, b = batch(seed=3, span_prediction=span_prediction)
        _, c = batch(seed=4, span_prediction=span_prediction)
        assert all(torch.equal(a[key], b[key]) for key in a)
        assert not torch.equal(a["order"], c["order"])


def test_loss_is_the_cross_entropy_of_the_predicted_tokens():
    torch.manual_seed(0)
    model = XLNet(XLNetConfig(vocab_size=100, d_model=32, n_layer=1, n_head=4, dropout=0.0))
    _, out = batch(predict_fraction_k=4)
    loss, metrics = permutation_lm_loss(model, out)
    logits, _ = model(out["input_ids"], perm_mask=out["perm_mask"], target_mapping=out["target_mapping"])
    assert logits.shape == (4, 6, 100)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 100), out["labels"].reshape(-1)))
    correct = (logits.argmax(-1) == out["labels"]).float().mean()
    assert metrics["plm_acc"] == correct and metrics["plm_loss"] == loss.detach()
    loss.backward()
    assert model.mask_emb.grad.abs().sum() > 0  # the predictions come from the query stream


def test_a_single_token_has_nothing_to_predict_from():
    with pytest.raises(LmforgeError, match="at least 2 tokens"):
        permutation_batch(torch.zeros(2, 1, dtype=torch.long))
