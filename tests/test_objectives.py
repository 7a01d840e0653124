"""The pretraining losses against cross-entropy on full logits, and their metrics."""

import torch
import torch.nn.functional as F

from lmforge.config import BertConfig
from lmforge.models import Bert
from lmforge.objectives.losses import mlm_loss, pretraining_loss

V = 40


def model_and_batch(objective="nsp", seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=V, n_layer=2, n_head=2, d_model=16, max_seq_len=12, dropout=0.0,
                     sentence_objective=objective)  # fmt: skip
    model = Bert(cfg).double()
    for p in model.parameters():  # large weights, so the logits are far from uniform and the argmax is stable
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (4, 12), generator=g)
    labels = torch.where(torch.rand(4, 12, generator=g) < 0.3, torch.randint(5, V, (4, 12), generator=g), -100)
    labels[0, 1] = 7  # at least one selected position
    batch = {
        "input_ids": ids, "token_type_ids": (torch.arange(12) >= 6).long().expand(4, 12),
        "attention_mask": torch.ones(4, 12, dtype=torch.bool), "labels": labels,
        "sentence_label": torch.tensor([0, 1, 1, 0]),
    }  # fmt: skip
    if objective == "none":
        del batch["sentence_label"]
    return model, batch


def test_mlm_loss_is_cross_entropy_at_the_selected_positions_only():
    model, batch = model_and_batch()
    hidden, _ = model.hidden(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    loss, accuracy = mlm_loss(model, hidden, batch["labels"])
    logits = model.mlm_logits(hidden)  # every position, as transformers computes them
    expected = F.cross_entropy(logits.view(-1, V), batch["labels"].view(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=1e-12)
    selected = batch["labels"] != -100
    right = (logits.argmax(-1) == batch["labels"])[selected].double().mean()
    torch.testing.assert_close(accuracy.double(), right)

    params = [p for p in model.parameters() if p.requires_grad and p is not model.pooler.weight]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    for g, e in zip(grads, expected_grads, strict=True):
        if e is None:
            assert g is None or (g == 0).all()
        else:
            torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-9)


def test_pretraining_loss_adds_the_sentence_objective():
    model, batch = model_and_batch("sop")
    loss, metrics = pretraining_loss(model, batch)
    mlm, sentence = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    expected_mlm = F.cross_entropy(mlm.view(-1, V), batch["labels"].view(-1))
    expected_sop = F.cross_entropy(sentence, batch["sentence_label"])
    torch.testing.assert_close(loss, expected_mlm + expected_sop, atol=1e-12, rtol=1e-12)
    assert set(metrics) == {"mlm_loss", "mlm_acc", "sop_loss", "sop_acc"}
    torch.testing.assert_close(metrics["sop_loss"].double(), expected_sop.detach())
    expected_acc = (sentence.argmax(-1) == batch["sentence_label"]).double().mean()
    torch.testing.assert_close(metrics["sop_acc"].double(), expected_acc)
    assert all(not v.requires_grad for v in metrics.values())


def test_without_a_sentence_objective_only_mlm_counts():
    model, batch = model_and_batch("none")
    loss, metrics = pretraining_loss(model, batch)
    assert set(metrics) == {"mlm_loss", "mlm_acc"}
    torch.testing.assert_close(loss.detach(), metrics["mlm_loss"])


def test_a_causal_lm_evaluation_covers_eval_steps_batches_in_fewer_larger_ones():
    """CausalLM.eval_batches: exactly the first eval_steps x batch_size validation blocks, in batches of at least
    EVAL_TOKENS tokens (the last may be smaller), so the evaluation's mean is that of eval_steps training-size
    batches."""
    import itertools
    from types import SimpleNamespace

    import numpy as np

    from lmforge.config import load_config
    from lmforge.data import iter_eval_blocks
    from lmforge.objectives.families import EVAL_TOKENS, CausalLM

    val = np.arange(50_000) % 97
    for batch_size, seq_len, steps in ((12, 64, 20), (4, 32, 3), (2, 8, 700)):
        cfg = load_config("char-small", [f"train.batch_size={batch_size}", f"train.seq_len={seq_len}",
                                         f"train.eval_steps={steps}"])  # fmt: skip
        batches = list(CausalLM().eval_batches(cfg, SimpleNamespace(val=val)))
        expected = list(itertools.islice(iter_eval_blocks(val, batch_size, seq_len), steps))
        for i in range(2):  # inputs and targets
            assert torch.equal(torch.cat([b[i] for b in batches]), torch.cat([b[i] for b in expected]))
        rows = max(batch_size, EVAL_TOKENS // seq_len)
        assert [len(b[0]) for b in batches[:-1]] == [rows] * (len(batches) - 1) and len(batches[-1][0]) <= rows
        assert len(batches) == -(-batch_size * steps // rows) < len(expected)
