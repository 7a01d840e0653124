"""Cross-entropy over a vocabulary projection, fused so the (tokens x vocab) logits never exist at once."""

from __future__ import annotations

import math

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softmax(x W^T) against targets; gradients are computed chunk by chunk in the forward.

    A GPT's vocabulary logits are the largest tensor of a training step (2048 tokens x 50257 words = 400 MB in fp32);
    here only one chunk of rows is alive at a time, and its softmax gradient is formed in place.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, ignore_index: int, chunk_rows: int):
        valid = targets != ignore_index
        count = int(valid.sum())
        log_count = math.log(max(count, 1))
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros_like(weight) if weight.requires_grad else None
        acc = torch.promote_types(x.dtype, torch.float32)  # at least fp32; fp64 inputs stay fp64
        total = torch.zeros((), dtype=acc, device=x.device)
        for start in range(0, x.size(0), chunk_rows):
            xs, ts, vs = (
                x[start : start + chunk_rows],
                targets[start : start + chunk_rows],
                valid[start : start + chunk_rows],
            )
            logits = (xs @ weight.t()).to(acc)  # (rows, V)
            lse = torch.logsumexp(logits, dim=-1)
            ts = ts.masked_fill(~vs, 0)  # ignore_index may lie outside the vocabulary
            picked = logits.gather(1, ts[:, None]).squeeze(1)
            total += ((lse - picked) * vs).sum()
            # d loss / d logits = (softmax - onehot) / count on valid rows, 0 on ignored rows
            shift = torch.where(vs, lse + log_count, torch.full_like(lse, float("inf")))
            grad = logits.sub_(shift[:, None]).exp_()
            rows = torch.arange(grad.size(0), device=x.device)
            grad[rows, ts] -= vs.to(acc) / max(count, 1)
            grad = grad.to(x.dtype)
            grad_x[start : start + chunk_rows] = grad @ weight
            if grad_w is not None:
                grad_w.addmm_(grad.t(), xs)
        ctx.save_for_backward(grad_x, grad_w if grad_w is not None else torch.empty(0))
        ctx.has_grad_w = grad_w is not None
        return total / max(count, 1)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_out, (grad_w * grad_out if ctx.has_grad_w else None), None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """Mean cross-entropy of the logits x @ weight.T against targets, without materializing all the logits.

    x: (..., d), weight: (V, d), targets: (...) with ignore_index marking positions that do not count.
    Equal to F.cross_entropy(x @ weight.T, targets, ignore_index=ignore_index) up to float rounding.
    """
    return _LinearCrossEntropy.apply(x.reshape(-1, x.size(-1)), weight, targets.reshape(-1), ignore_index, chunk_rows)
