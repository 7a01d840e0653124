"""seq2seq_loss (the LM head fused with the cross-entropy) against the naive computation on the model's logits:
F.cross_entropy with label smoothing, padding ignored; loss, gradients, token accuracy and the plain NLL."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import T5Config
from lmforge.models.t5 import T5
from lmforge.objectives.losses import seq2seq_loss

VARIANTS = {
    "t5 v1.0 (tied head, rescaled)": dict(),
    "t5 v1.1 (untied)": dict(feed_forward="gated-gelu", tie_embeddings=False),
    "original transformer (tied, biases)": dict(position="sinusoidal", norm="post", norm_type="layer", bias=True),
}


def model_and_batch(variant: str):
    torch.manual_seed(0)
    shape = dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, n_layer=2, n_head=4, dropout=0.0, max_seq_len=16,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20)  # fmt: skip
    cfg = T5Config(**shape, **VARIANTS[variant])
    model = T5(cfg).double()
    ids = torch.randint(2, 97, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[2, 3:] = 0, 0
    labels = torch.randint(2, 97, (3, 7))
    labels[0, 5:], labels[2, 2:] = -100, -100
    decoder_input_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), labels[:, :-1]], dim=1).clamp(min=0)
    batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
             "decoder_input_ids": decoder_input_ids, "labels": labels}  # fmt: skip
    return model, batch


def naive(model, batch, label_smoothing):
    logits = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])
    flat, labels = logits.flatten(0, 1), batch["labels"].flatten()
    loss = F.cross_entropy(flat, labels, ignore_index=-100, label_smoothing=label_smoothing)
    nll = F.cross_entropy(flat, labels, ignore_index=-100)
    kept = labels != -100
    accuracy = (flat[kept].argmax(-1) == labels[kept]).double().mean()
    return loss, nll, accuracy


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("variant", VARIANTS)
def test_equals_cross_entropy_on_the_logits(variant, label_smoothing):
    model, batch = model_and_batch(variant)
    loss, metrics = seq2seq_loss(model, batch, label_smoothing=label_smoothing)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref_loss, ref_nll, ref_accuracy = naive(model, batch, label_smoothing)
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert abs(float(loss.detach()) - float(ref_loss.detach())) < 1e-5
    assert abs(float(metrics["nll"]) - float(ref_nll.detach())) < 1e-5
    assert float(metrics["token_acc"]) == pytest.approx(float(ref_accuracy))
    assert not metrics["nll"].requires_grad
    for g, ref in zip(grads, ref_grads, strict=True):
        assert (g - ref).abs().max() < 1e-5


def test_label_smoothing_raises_the_loss_above_the_nll():
    model, batch = model_and_batch("t5 v1.0 (tied head, rescaled)")
    plain, plain_metrics = seq2seq_loss(model, batch)
    smoothed, metrics = seq2seq_loss(model, batch, label_smoothing=0.1)
    assert float(plain.detach()) == pytest.approx(float(plain_metrics["nll"]))
    assert float(metrics["nll"]) == pytest.approx(float(plain_metrics["nll"]))
    assert float(smoothed.detach()) != pytest.approx(float(plain.detach()))
