"""The largest logit's index without reading the whole fp32 LM head: screen with int8 copies, confirm in fp32.

Greedy decoding needs argmax_i x.W_i, not the logits. On a CPU, batch-1 decoding is bound by reading the weights,
and the LM head of a GPT-2-sized model is a third of them (154 MB of 497 in fp32). Its int8 copy is a quarter of
those bytes, and the product of two int8 copies is exact in int32. With x = s_x x_q + e and W_i = s_i q_i + d_i
(symmetric int8 rounding: s_x per row of x, s_i per row of W),

    x.W_i = s_x s_i (x_q.q_i) + s_x x_q.d_i + e.W_i,   so   |x.W_i - s_x s_i (x_q.q_i)| <= s_x |x_q| |d_i| + |e| |W_i|

by Cauchy-Schwarz. A row whose upper bound falls below some row's lower bound cannot hold the maximum; the few
rows left are multiplied in fp32, which gives the fp32 argmax (ties to the lowest index, as torch.argmax), up to the
rounding that any two fp32 kernels differ by. A slack of 2 (d + 8) 2^-24 |x| |W_i|, twice what the rounding of the
fp32 products and of the bound's own arithmetic can add up to, covers it.

On an x86 CPU without VNNI the screen's product is oneDNN's uint8 x int8 one (lmforge.kernels.int8), with the
screen's rows rounded with their adjacent pairs bounded: x is rounded asymmetrically to 255 steps,
x = s_x (u + o) + e, and the same bound holds with u + o in place of x_q, plus the fp32 rounding of the offset's
term, s_x s_i (u.q_i + o sum(q_i)), which may cancel.
"""

from __future__ import annotations

import weakref

import torch

from lmforge.kernels.int8 import (
    int8_product,
    int_mm_works,
    quantize_activations,
    quantize_rows,
    u8_product,
    u8_product_works,
)
from lmforge.kernels.state import weight_state

SCREEN_MIN_NUMEL = 2**22  # smaller heads (16 MB in fp32) are read from cache: the full product is as fast
CONFIRM_MAX_SHARE = 8  # more than 1/8 of the rows left to confirm: the full product is cheaper
_CHUNK = 256  # rows quantized at a time, so that the build works in L2 (70 ms for GPT-2 small's head, 180 in one go)


class ArgmaxScreen:
    """The int8 copy of one weight matrix and the per-row norms of the bound.

    Built once and kept while the weight is unchanged, so decoding token after token pays for it once."""

    @torch.no_grad()
    def __init__(self, weight: torch.Tensor):
        self.weight, self.key = weakref.ref(weight), weight_state(weight)
        n = weight.size(0)
        self.q = torch.empty(weight.shape, dtype=torch.int8)
        self.scale, self.w_norm, self.d_norm = (torch.empty(n) for _ in range(3))
        self.unsigned = u8_product_works()  # the uint8 product: the offset's term needs each row's sum and norm
        for start in range(0, n, _CHUNK):
            w = weight[start : start + _CHUNK]
            # pairs bounded on every CPU: a VNNI CPU's 4-16 rows then take fbgemm, not torch._int_mm's slow few rows
            q, scale = quantize_rows(w, pair_bound=True)
            rows = slice(start, start + len(w))
            self.q[rows], self.scale[rows] = q, scale
            self.w_norm[rows] = w.norm(dim=1)
            self.d_norm[rows] = (w - q * scale[:, None]).norm(dim=1)
        self.slack = 2 * (weight.size(1) + 8) * 2.0**-24
        if self.unsigned:
            self.q_sum, self.q_norm = self.q.sum(1, dtype=torch.int32).float(), self.q.float().norm(dim=1)

    def fits(self, weight: torch.Tensor) -> bool:
        """Whether this screen was built from weight as it is now (same tensor, storage and version counter)."""
        return self.weight() is weight and self.key == weight_state(weight)

    @torch.no_grad()
    def candidates(self, x: torch.Tensor) -> torch.Tensor | None:
        """Sorted indices of the rows that may hold the largest logit of some row of x (B, d), or None when they
        are so many that the full product is cheaper (or x is not finite: no bound holds)."""
        if not torch.isfinite(x).all():
            return None
        if self.unsigned:
            x_u, s_x, offset = quantize_activations(x, unsigned=True)  # x ~= s_x (x_u + offset), 8 bits
            steps, sums = x_u.float() + offset, u8_product(x_u, self.q)
            # the sums' own terms, |u.q_i| and |o sum(q_i)|, bound what fp32 loses adding the offset's term
            cancel = torch.addcmul(x_u.float().norm(dim=1, keepdim=True) * self.q_norm, offset.abs(), self.q_sum.abs())
            approx = sums.addcmul_(offset, self.q_sum)
            rounding = cancel.mul_(2.0**-21 * s_x * self.scale)
            s_x = s_x.squeeze(1)
        else:
            x_q, s_x = quantize_rows(x)
            steps, approx, rounding = x_q.float(), int8_product(x_q, self.q).float(), None
        approx.mul_(s_x[:, None] * self.scale)
        e_norm = (x - steps * s_x[:, None]).norm(dim=1, keepdim=True)
        a = (s_x * steps.norm(dim=1))[:, None]
        b = e_norm + self.slack * x.norm(dim=1, keepdim=True)
        margin = torch.addcmul(a * self.d_norm, b, self.w_norm)
        if rounding is not None:
            margin.add_(rounding)
        floor = (approx - margin).amax(dim=1, keepdim=True)
        rows = (approx.add_(margin) >= floor).any(dim=0).nonzero().squeeze(1)
        return rows if rows.numel() * CONFIRM_MAX_SHARE <= self.q.size(0) else None


def screens(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether screening applies: a large fp32 CPU weight, no bias, no gradient to record, a version counter."""
    if bias is not None or weight.numel() < SCREEN_MIN_NUMEL or x.dim() != 2:
        return False
    if weight.device.type != "cpu" or not x.dtype == weight.dtype == torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    # an inference tensor keeps no version counter to tell an update by
    return not weight.is_inference() and (int_mm_works() or u8_product_works())
