"""Cross-entropy over a vocabulary projection, fused so the (tokens x vocab) logits never exist at once."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from lmforge.kernels.linear import linear, vocab_major_logits, weight_grad
from lmforge.kernels.native import softmax_cross_entropy, softmax_cross_entropy_runs

EXP_BLOCK = 256  # vocabulary rows exponentiated at a time: 256 x 2048 tokens = 2 MB, in cache


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of softmax(x W^T + b) against targets; gradients are computed chunk by chunk in the forward.

    A GPT's vocabulary logits are the largest tensor of a training step (2048 tokens x 50257 words = 400 MB in fp32);
    here only one chunk of rows is alive at a time, its softmax gradient is formed in place, and the 1/count scale
    is applied to the small (rows, d) factors rather than to the (rows, V) gradient. Where torch's product forms
    x W^T slowly (linear.vocab_major_logits), a chunk's logits are formed as W x^T, vocabulary first.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, targets, ignore_index: int, chunk_rows: int, grad_enabled: bool, count: bool,
                smoothing: float, vocab_major: bool):  # fmt: skip
        acc = torch.promote_types(x.dtype, torch.float32)  # at least fp32; fp64 inputs stay fp64
        valid = targets != ignore_index
        scale = valid.to(acc) / valid.sum().clamp(min=1).to(acc)  # (N,): 1/count on counted rows, 0 elsewhere
        safe_targets = targets.masked_fill(~valid, 0)  # ignore_index may lie outside the vocabulary
        want = tuple(grad_enabled and need for need in ctx.needs_input_grad[:3])  # no work under no_grad
        grad_x = torch.empty_like(x) if want[0] else None
        grad_w = None  # the first chunk's, or their sum (_add_chunk)
        grad_b = torch.zeros_like(bias) if want[2] else None
        nll = torch.zeros((), dtype=acc, device=x.device)
        mean_logp = torch.zeros((), dtype=acc, device=x.device)  # sum over rows of scale * mean_v logp (smoothing)
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        chunk = _vocab_first_chunk if vocab_major else _rows_first_chunk
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, start + chunk_rows)
            xs, ts, ss, counted = x[rows], safe_targets[rows], scale[rows], valid[rows]
            logit_t, lse, mean_logits, hits, grads = chunk(xs, weight, bias, ts, ss, counted, smoothing, count, want)
            nll -= ((logit_t - lse) * ss).sum()
            if smoothing:
                mean_logp += ((mean_logits - lse) * ss).sum()
            if count:
                correct += (hits & counted).sum()
            if want[0]:
                grad_x[rows] = grads[0]
            if want[1]:
                grad_w = _add_chunk(grad_w, grads[1], weight)
            if want[2]:
                grad_b += grads[2].to(bias.dtype)
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        ctx.mark_non_differentiable(nll, correct)
        total = (1 - smoothing) * nll - smoothing * mean_logp if smoothing else nll.clone()
        return total, nll, correct

    @staticmethod
    def backward(ctx, grad_out, _grad_nll, _grad_correct):
        grads = tuple(None if g is None else g * grad_out for g in ctx.saved_tensors)
        return (*grads, None, None, None, None, None, None, None)


def _add_chunk(total: torch.Tensor | None, part: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """total + part in like's dtype and layout. A first part that has them already is taken as it is: a single chunk
    (the usual case) costs no zeroed buffer and no pass of its own (GPT-2's head: two passes over 77 MB)."""
    if total is None:
        if part.dtype == like.dtype and part.is_contiguous():
            return part
        total = torch.zeros_like(like)
    return total.add_(part)


def _rows_first_chunk(xs, weight, bias, ts, ss, counted, smoothing: float, count: bool, want: tuple):
    """One chunk of rows with its logits (rows, V): (target logits, log-sum-exps, mean logits or None, top-1 hits or
    None, (grad_x, grad_w, grad_b) of the scaled loss, each None where not wanted)."""
    logits = linear(xs, weight, bias)
    if _native(logits, ts, ss):
        return _native_chunk(logits, xs, weight, ts, ss, smoothing, count, want)
    acc = torch.promote_types(xs.dtype, torch.float32)
    # the gradient products' dtype: under autocast its (bf16), cast once here rather than once in each product
    device = xs.device.type
    product = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else xs.dtype
    prob = torch.softmax(logits, dim=-1, dtype=acc)  # (rows, V); bf16 logits read once, as fp32
    logit_t = logits.gather(1, ts[:, None]).squeeze(1).to(acc)
    lse = _log_sum_exp(logits, prob, ts, counted)
    mean_logits = logits.mean(dim=-1, dtype=acc) if smoothing else None
    hits = prob.argmax(dim=-1) == ts if count else None
    if not any(want):
        return logit_t, lse, mean_logits, hits, (None, None, None)
    # d loss / d logits = (softmax - (1 - eps) onehot - eps / V) * scale
    grad = prob
    grad[torch.arange(grad.size(0), device=xs.device), ts] -= 1 - smoothing
    if smoothing:
        grad -= smoothing / grad.size(1)
    grad_b = ss @ grad if want[2] else None
    grad = grad.to(product)
    grad_x = linear(grad, weight.t()) * ss[:, None].to(xs.dtype) if want[0] else None
    grad_w = weight_grad(grad, xs * ss[:, None].to(xs.dtype)) if want[1] else None
    return logit_t, lse, mean_logits, hits, (grad_x, grad_w, grad_b)


def _native(logits: torch.Tensor, ts: torch.Tensor, ss: torch.Tensor) -> bool:
    """Whether a chunk's softmax and gradient run lmforge's C kernel: fp32 CPU logits (no autocast) and scale, int64
    contiguous targets (others take torch's path)."""
    plain = logits.dtype == ss.dtype == torch.float32 and logits.device.type == "cpu" and logits.is_contiguous()
    return plain and ts.dtype == torch.int64 and ts.is_contiguous() and softmax_cross_entropy_runs()


def _native_chunk(logits, xs, weight, ts, ss, smoothing: float, count: bool, want: tuple):
    """_rows_first_chunk's results from fp32 logits, whose softmax, log-sum-exp, target logit and scaled gradient
    the C kernel forms in place in three passes over each row, where torch's softmax, gathers, one-hot and two
    scalings of the (rows, d) factors took about ten operations (a 2-core Zen 4, forward and backward, alternating:
    char-small's head 1.42 -> 0.90 ms, train_gpt.py's 1.42 -> 1.37 s). The scale is applied to the (rows, V)
    gradient as it is formed, so the products take it as it is."""
    lse, logit_t, mean_logits, top = softmax_cross_entropy(logits, ts, ss, smoothing, any(want), count)
    hits = top == ts if count else None
    if not any(want):
        return logit_t, lse, mean_logits, hits, (None, None, None)
    grad = logits  # scale (softmax - (1 - eps) onehot - eps / V), row by row
    grad_x = linear(grad, weight.t()) if want[0] else None
    grad_w = weight_grad(grad, xs) if want[1] else None
    return logit_t, lse, mean_logits, hits, (grad_x, grad_w, grad.sum(0) if want[2] else None)


def _vocab_first_chunk(xs, weight, bias, ts, ss, counted, smoothing: float, count: bool, want: tuple):
    """_rows_first_chunk with the logits formed as W x^T, (V, rows), and exponentiated in place, block by block while
    they sit in cache. The softmax's normalization and the loss's scale, both per row, are applied to the small
    (rows, d) factors of the products rather than to the (V, rows) gradient."""
    logits = weight @ xs.t() if bias is None else torch.addmm(bias[:, None], weight, xs.t())
    columns = torch.arange(xs.size(0), device=xs.device)
    logit_t = logits[ts, columns]
    mean_logits = logits.mean(dim=0) if smoothing else None
    hits = logits.argmax(dim=0) == ts if count else None
    top = logits.amax(dim=0)
    total = torch.zeros_like(top)
    for start in range(0, logits.size(0), EXP_BLOCK):
        block = logits[start : start + EXP_BLOCK].sub_(top).exp_()
        total += block.sum(dim=0)
    lse = top + total.log()
    if not any(want):
        return logit_t, lse, mean_logits, hits, (None, None, None)
    # the gradient of each row's loss is (exp(logits - top) / total - (1 - eps) onehot - eps / V) * scale: with
    # r = scale / total, exp(...) - total * ((1 - eps) onehot + eps / V), times r
    grad = logits
    grad[ts, columns] -= (1 - smoothing) * total
    if smoothing:
        grad -= (smoothing / grad.size(0)) * total
    r = (ss / total)[:, None]
    grad_x = (grad.t() @ weight).mul_(r) if want[0] else None
    grad_w = grad @ (xs * r) if want[1] else None
    grad_b = grad @ r.squeeze(1) if want[2] else None
    return logit_t, lse, mean_logits, hits, (grad_x, grad_w, grad_b)


def _log_sum_exp(logits: torch.Tensor, prob: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor):
    """Each row's log-sum-exp, read off its softmax as logit_t - log p_t (no pass over the logits of its own; the
    largest probability would be safe from underflow but costs one, 30 ms a step on GPT-2's head). A counted row
    whose target probability is too small for its log to be exact gets the log-sum-exp of its logits instead."""
    p_t = prob.gather(1, targets[:, None]).squeeze(1)
    lse = logits.gather(1, targets[:, None]).squeeze(1).to(prob.dtype) - p_t.log()
    lse = lse.where(counted, 0.0)  # an ignored row (target 0 stands in) is multiplied by 0: finite, never recomputed
    far = (p_t < 1e-30) & counted
    if far.any():
        lse[far] = torch.logsumexp(logits[far].to(prob.dtype), dim=-1)
    return lse


def outside_graphs(fn: Callable) -> Callable:
    """fn kept out of torch.compile graphs, as torch.compiler.disable does, but decided when a graph is traced: the
    decorator imports torch._dynamo, 2 of the 5 s that `lmforge estimate` took on a slow CPU."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.compiler.is_compiling():
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


@outside_graphs
def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    bias: torch.Tensor | None = None,
    return_correct: bool = False,
    label_smoothing: float = 0.0,
    return_nll: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Mean cross-entropy of the logits x @ weight.T (+ bias) against targets, without materializing all the logits.

    x: (..., d), weight: (V, d), bias: (V,) or None, targets: (...) with ignore_index marking positions that do not
    count. Equal to F.cross_entropy(F.linear(x, weight, bias), targets, ignore_index=ignore_index) up to float
    rounding. return_correct=True also returns how many counted rows have their target as the top logit (accuracy
    for free: the logits pass by anyway). label_smoothing eps keeps 1 - eps on the target and spreads eps over the
    vocabulary, as F.cross_entropy(label_smoothing=eps) does; return_nll=True also returns the plain (unsmoothed)
    cross-entropy, without a gradient. Extras follow the loss in that order: (loss, correct, nll). chunk_rows
    defaults to as many rows as keep one chunk's logits under 512 MB in fp32. Kept out of torch.compile graphs: its
    chunk loop is already a few large matmuls.
    """
    chunk_rows = chunk_rows or max(256, 2**27 // weight.size(0))
    loss, nll, correct = _LinearCrossEntropy.apply(
        x.reshape(-1, x.size(-1)), weight, bias, targets.reshape(-1), ignore_index, chunk_rows,
        torch.is_grad_enabled(), return_correct, float(label_smoothing), vocab_major_logits(x, weight, bias),
    )  # fmt: skip
    extras = (correct,) * return_correct + (nll,) * return_nll
    return (loss, *extras) if extras else loss
