"""XLNet's permutation language modelling (Yang et al., 2019): each sequence gets a random factorization order, and
the tokens at the end of it are predicted, each from the tokens before it in the order, on both sides of it in
the text. Only the last 1/K of the order is predicted (partial prediction: the first tokens have too little context
to learn from); span prediction chooses the predicted tokens as spans of up to max_span neighbours instead.

The order is the context (the positions not predicted) in a random order, then the predicted positions in a random
order; with single-token prediction the predicted set is uniform, so this is the last 1/K of a uniformly random
permutation. Everything is drawn from a torch.Generator, so a seed gives the same batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.kernels.cross_entropy import linear_cross_entropy


def num_predict(length: int, predict_fraction_k: int) -> int:
    """Predicted tokens in a sequence of `length`: length / K, at least one, and one token of context left."""
    return min(max(length // predict_fraction_k, 1), length - 1)


def span_targets(
    length: int, n: int, predict_fraction_k: int, max_span: int, generator: torch.Generator | None
) -> torch.Tensor:
    """n positions of a sequence of `length`, as spans (XLNet's _sample_mask): lengths L in 1..max_span drawn with
    P(L) proportional to 1/L, each placed at random in a stretch of about K * L tokens after the previous one; the
    last span is cut to reach n, and positions drawn at random fill any shortfall."""
    chosen = torch.zeros(length, dtype=torch.bool)
    weights = 1 / torch.arange(1, max_span + 1, dtype=torch.float)
    cur = 0
    while int(chosen.sum()) < n:
        span = int(torch.multinomial(weights, 1, generator=generator)) + 1
        context = round(span * predict_fraction_k)
        begin = cur + int(torch.randint(0, context - span + 1, (1,), generator=generator))
        if begin >= length:
            break
        end = min(begin + span, length, begin + n - int(chosen.sum()))
        chosen[begin:end] = True
        cur = begin + span
    rest = (~chosen).nonzero().flatten()
    missing = n - int(chosen.sum())
    chosen[rest[torch.randperm(len(rest), generator=generator)[:missing]]] = True
    return chosen.nonzero().flatten()


def permutation_batch(
    tokens: torch.Tensor,
    predict_fraction_k: int = 6,
    span_prediction: bool = False,
    max_span: int = 5,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """A permutation-LM batch from token ids (B, T):

    input_ids (B, T) the tokens themselves (the content stream sees them; the query stream never its own);
    perm_mask (B, T, T) 1 where position i may not see j, i.e. j is not before i in the order (the model lets the
    content stream see itself); target_mapping (B, num_predict, T) one-hot rows, the predictions in their order;
    labels (B, num_predict) the tokens to predict; order (B, T) the positions in factorization order.
    """
    b, t = tokens.shape
    if t < 2:
        raise LmforgeError(f"permutation language modelling needs sequences of at least 2 tokens, not {t}")
    n = num_predict(t, predict_fraction_k)
    orders = []
    for _ in range(b):
        if span_prediction:
            targets = span_targets(t, n, predict_fraction_k, max_span, generator)
        else:
            targets = torch.randperm(t, generator=generator)[:n]
        predicted = torch.zeros(t, dtype=torch.bool)
        predicted[targets] = True
        context, targets = (~predicted).nonzero().flatten(), predicted.nonzero().flatten()
        context = context[torch.randperm(len(context), generator=generator)]
        orders.append(torch.cat([context, targets[torch.randperm(n, generator=generator)]]))
    order = torch.stack(orders).to(tokens.device)  # (B, T)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(t, device=tokens.device).expand(b, t))
    perm_mask = (rank[:, None, :] >= rank[:, :, None]).float()  # (B, T, T): key j not before query i
    predicted_positions = order[:, t - n :]  # (B, n)
    target_mapping = F.one_hot(predicted_positions, t).float()
    return {
        "input_ids": tokens,
        "perm_mask": perm_mask,
        "target_mapping": target_mapping,
        "labels": tokens.gather(1, predicted_positions),
        "order": order,
    }


def permutation_lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of the query stream's predictions against the labels, and the metrics plm_loss and plm_acc
    (the share of predicted tokens whose most likely id is the label)."""
    x, _ = model.predicted(batch["input_ids"], perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"])
    labels, head = batch["labels"], model.lm_head
    loss, correct = linear_cross_entropy(x, head.weight, labels, bias=head.bias, return_correct=True)
    return loss, {"plm_loss": loss.detach(), "plm_acc": correct / labels.numel()}


class PermutationSampler:
    """Random windows of seq_len tokens from a split (documents back to back), each given a new factorization order
    at every draw from a private generator; the BatchSampler interface (next, state_dict, load_state_dict)."""

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int, predict_fraction_k: int = 6,
                 span_prediction: bool = False, max_span: int = 5):  # fmt: skip
        if len(tokens) < 2:
            raise LmforgeError(f"the split has {len(tokens)} token(s): permutation LM needs 2; use more text")
        self.tokens, self.batch_size, self.length = tokens, batch_size, min(seq_len, len(tokens))
        self.options = {"predict_fraction_k": predict_fraction_k, "span_prediction": span_prediction,
                        "max_span": max_span}  # fmt: skip
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def next(self) -> dict[str, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.length + 1, (self.batch_size,), generator=self.generator)
        windows = [torch.from_numpy(self.tokens[s : s + self.length].astype("int64")) for s in starts.tolist()]
        self.batches += 1
        return permutation_batch(torch.stack(windows), generator=self.generator, **self.options)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.batches = state["batches"]
