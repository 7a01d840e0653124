"""Training objectives: a batch in, a scalar loss out (and, for pretraining, the metrics that tell it is learning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.data import IGNORE
from lmforge.errors import LmforgeError
from lmforge.kernels.cross_entropy import linear_cross_entropy


def causal_lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy; the LM head and the loss are fused so the vocabulary logits are never stored."""
    hidden, _ = model.hidden(x)
    return linear_cross_entropy(hidden, model.lm_head.weight, y)


def mlm_loss(model, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-LM cross-entropy and accuracy over the selected positions (labels != IGNORE) only.

    The head runs on those ~15% of the hidden states alone, and its vocabulary projection is fused with the loss:
    the logits at the other 85% are never computed (transformers' BertForPreTraining computes them all).
    """
    if model.mlm_head is None:
        raise LmforgeError("this encoder has no MLM head (model.mlm_head: false); set it to true to pretrain it")
    selected = labels != IGNORE
    targets = labels[selected]
    loss, correct = linear_cross_entropy(
        model.mlm_head.transform(hidden[selected]), model.embeddings.word.weight, targets,
        bias=model.mlm_head.bias, return_correct=True,
    )  # fmt: skip
    return loss, correct / max(targets.numel(), 1)


def pretraining_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MLM loss plus, when the batch has sentence labels, the NSP or SOP cross-entropy on the pooled [CLS] state.

    Metrics: mlm_loss, mlm_acc and {nsp,sop}_loss, {nsp,sop}_acc (accuracy over the selected tokens / the pairs).
    """
    hidden, _ = model.hidden(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    loss, accuracy = mlm_loss(model, hidden, batch["labels"])
    metrics = {"mlm_loss": loss.detach(), "mlm_acc": accuracy}
    if "sentence_label" in batch:
        logits, labels = model.sentence_logits(hidden), batch["sentence_label"]
        sentence = F.cross_entropy(logits, labels)
        name = model.cfg.sentence_objective
        metrics[f"{name}_loss"] = sentence.detach()
        metrics[f"{name}_acc"] = (logits.argmax(dim=-1) == labels).float().mean()
        loss = loss + sentence
    return loss, metrics


def seq2seq_loss(model, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0):
    """An encoder-decoder's cross-entropy on the targets with teacher forcing, label-smoothed when asked (the
    target keeps 1 - eps and eps is spread over the vocabulary, as torch's cross_entropy does); its token accuracy
    and the plain negative log-likelihood, whose exp is the perplexity.

    The LM head runs on the real target positions only and is fused with the loss: the (tokens x vocabulary) logits
    are never stored (transformers' T5 computes them at every position, padding included)."""
    memory = model.encode(batch["input_ids"], batch["attention_mask"])
    hidden = model.decoder_hidden(batch["decoder_input_ids"], memory, batch["attention_mask"])  # (B, T, d_model)
    labels = batch["labels"]
    kept = labels != IGNORE
    targets = labels[kept]
    loss, correct, nll = linear_cross_entropy(
        hidden[kept], model.lm_head.weight, targets, bias=model.lm_head.bias, return_correct=True,
        label_smoothing=label_smoothing, return_nll=True,
    )  # fmt: skip
    return loss, {"token_acc": correct / max(targets.numel(), 1), "nll": nll}
