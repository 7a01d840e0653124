"""int8 weights and activations (W8A8, dynamic): a linear layer that reads a quarter of fp32's bytes.

Decoding on a CPU is bound by reading the weights. Each output channel (row of W) is rounded to int8 with a scale of
its own, W ~= s_w[:, None] * q, once, when the model is quantized. Each row (token) of x is rounded when it arrives,
asymmetrically: its range [min, max] (0 included) is cut into 255 steps, x ~= s_x (x_q + o_x) with x_q int8 and o_x
an offset per row. Activations are often one-signed (a GELU's output is >= -0.17), and a symmetric grid would spend
half its levels on values that never occur. Then

    x W^T ~= s_x s_w^T * (x_q q^T + o_x (sum_i q_i)^T),

where x_q q^T is exact in int32 and runs on the CPU's int8 dot-product instructions (AVX-512 VNNI through oneDNN's
torch._int_mm). Norms, softmax and the residual stream stay in fp32, outside these layers. An x86 CPU without VNNI
(AVX2 only) adds each pair of uint8 x int8 products, x_2i q_2i + x_2i+1 q_2i+1, in int16, which saturates at 2^15:
so each row of W is rounded with its adjacent pairs bounded, |q_2i| + |q_2i+1| <= 128 (255 * 128 < 2^15), and the
activations keep their 8 bits there as well, at about twice fp32's speed (lmforge's C kernel for one to three rows,
fbgemm's for up to 16, oneDNN's for more). Weights rounded without that bound (checkpoints written before it) get
activations of 7 bits there instead (255 * 127 * 2 would saturate; 127 * 127 * 2 does not), which costs precision
(docs/quantization.md).

Smoothing (SmoothQuant, Xiao et al., 2023): a few input channels carry most of an activation's range, which then
sets every channel's rounding step. Dividing channel j of x by c_j and multiplying column j of W by c_j leaves the
product unchanged and moves that range into the weights, which are rounded per row;
c_j = max|x_j|^a / max|W_j|^(1-a), max|x_j| measured on calibration texts (lmforge.kernels.calibration: built-in
ones by default).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.kernels.cpu import has_vnni, is_x86
from lmforge.kernels.native import i8_gemv, i8_gemv_runs, sums_exact, u8_gemv, u8_gemv_runs
from lmforge.kernels.once import asked_once
from lmforge.kernels.state import weight_state

CHUNK_ROWS = 256  # rows rounded and multiplied at a time: larger inputs would spill their temporaries out of cache
PAIR_BOUND = 128  # |q_2i| + |q_2i+1| of a weight row: a uint8 activation's pair sums within int16, 255 * 128 < 2^15
U8_STEPS_UNBOUNDED = 127  # an activation row's steps where weights' pairs are not bounded: 127 * 127 * 2 < 2^15
GEMV_ROWS = 3  # rows up to which lmforge's C kernel beats fbgemm's (GPT-2 small, Zen 3: 1 row 4.4 against 7.6 ms,
# 3 rows 6.4 against 8.0, 4 rows 14.0 against 8.0)
FBGEMM_ROWS = 16  # rows up to which fbgemm's uint8 product beats oneDNN's on a Zen 3 (equal at 32, slower from 64)


@asked_once
def int_mm_works() -> bool:
    """Whether torch._int_mm is the fast way to int8 products here: oneDNN's int8 dot-product kernel, exact int32
    sums. An x86 CPU without VNNI gets a plain loop instead, far slower than fp32 (2.8 GOPS against 146 GFLOP/s on a
    2-core Zen 3), so int8 products take oneDNN's uint8 kernel there (u8_product_works)."""
    return int_mm_runs() and (has_vnni() or not is_x86())


@asked_once
def int_mm_runs() -> bool:
    """torch._int_mm on the CPU, run by oneDNN (without it the product is a plain loop); checked once, on a tiny
    product, when first needed (not at import)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        a = torch.ones(1, 8, dtype=torch.int8)
        return bool(torch._int_mm(a, a.t()).item() == 8)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantize_rows(w: torch.Tensor, pair_bound: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 rounding of each row: (q int8, scale fp32) with w ~= scale[:, None] * q. pair_bound: each
    row's step is its largest |w_2i| + |w_2i+1| over 127 rather than its largest |w_j| over 127, so that rounding
    leaves |q_2i| + |q_2i+1| <= PAIR_BOUND (the step grows by the largest value's neighbour: on all-MiniLM-L6-v2 the
    worst sentence's cosine to fp32 went 0.9968 -> 0.9965, and CPUs without VNNI keep 8-bit activations)."""
    a = w.abs()
    top = a.amax(dim=1)
    if pair_bound and w.size(1) > 1:
        top = torch.maximum(top, _pair_sums(a).amax(dim=1))
    scale = (top / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def pairs_bounded(q: torch.Tensor) -> bool:
    """Whether every row of int8 q (N, d) has |q_2i| + |q_2i+1| <= PAIR_BOUND."""
    return q.size(1) < 2 or bool(_pair_sums(q.abs().to(torch.int16)).max() <= PAIR_BOUND)


def _pair_sums(a: torch.Tensor) -> torch.Tensor:
    """a_2i + a_2i+1 for each row of a (N, d >= 2); an odd last column has no neighbour."""
    return a[:, 0 : a.size(1) - 1 : 2] + a[:, 1::2]


def quantize_activations(
    x: torch.Tensor, unsigned: bool = False, steps_in_range: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int8 rounding of each row of x (B, d): (x_q int8, scale (B, 1), offset (B, 1)) with
    x ~= scale * (x_q + offset). The grid spans [min(x, 0), max(x, 0)] in 255 steps, so 0 is exact. (amax and amin
    rather than aminmax, whose per-row reduction runs 10x slower on the CPU.) unsigned: x_q uint8 in
    [0, steps_in_range], for the CPUs whose int8 products sum pairs in int16 (255 steps, or U8_STEPS_UNBOUNDED
    against weights whose pairs are not bounded)."""
    lowest = 0 if unsigned else -128
    steps_in_range = steps_in_range if unsigned else 255
    lo, hi = x.amin(dim=1, keepdim=True).clamp_(max=0), x.amax(dim=1, keepdim=True).clamp_(min=0)
    scale = (hi - lo).div_(steps_in_range).clamp_min_(torch.finfo(torch.float32).tiny)  # 1 / scale is finite
    offset = torch.round(lo / scale).sub_(lowest)  # the lowest step maps to the lowest value of x_q's type
    steps = x * scale.reciprocal()  # a product per value rather than a division (a fifth of its cost)
    x_q = steps.round_().sub_(offset).clamp_(lowest, lowest + steps_in_range)
    return x_q.to(torch.uint8 if unsigned else torch.int8), scale, offset


@asked_once
def u8_product_works() -> bool:
    """Whether int8 layers take oneDNN's uint8 x int8 product: on x86 CPUs without VNNI (whose torch._int_mm is a
    plain loop), where it runs at twice fp32's rate (261 GOPS against 146 GFLOP/s on a 2-core Zen 3). Their AVX2
    kernel adds pairs of products in int16, which saturates beyond 2^15 - 1: activations keep 8 bits against weights
    whose pairs are bounded (quantize_rows(pair_bound=True)), 7 against others, as torch's own reduce_range does."""
    return is_x86() and not has_vnni() and u8_product_runs()


@asked_once
def u8_product_runs() -> bool:
    """oneDNN's uint8 x int8 product in this torch, checked once on the products closest to saturating."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return sums_exact(_onednn_sums)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_packs: dict[tuple, tuple[weakref.ref, object]] = {}  # (kind, weight_state(q)) -> (q's base, packed q)


def _packed(kind: str, q: torch.Tensor, pack: Callable[[], object]) -> object:
    """pack(), a library's copy of int8 weights q (N, d), made once per weight (or slice of one) and again after it
    changes in place: packing costs several products."""
    base = q if q._base is None else q._base
    key = (kind, weight_state(q))
    entry = _packs.get(key)
    if entry is None or entry[0]() is not base:
        for gone in [k for k, (ref, _) in _packs.items() if ref() is None]:
            del _packs[gone]
        entry = _packs[key] = (weakref.ref(base), pack())
    return entry[1]


def u8_packed(q: torch.Tensor) -> torch.Tensor:
    """q in oneDNN's blocked layout, laid out for one row (a decoding step), which serves batches as fast: one row of
    768 -> 2304 takes 106 us on a Zen 3 against 169 us laid out for no row count in particular."""
    return _packed("onednn", q, lambda: torch.ops.onednn.qlinear_prepack(q, [1, q.size(1)]))


def fbgemm_packed(q: torch.Tensor) -> object:
    """q as fbgemm's packed linear weight (torch's quantized engine), with unit scales: its products are the sums."""

    def pack():
        with warnings.catch_warnings():  # torch's quantized tensors are deprecated, and the only way into fbgemm
            warnings.simplefilter("ignore")
            ones, zeros = _unit_scales(q.size(0))
            w = torch._make_per_channel_quantized_tensor(q.contiguous(), ones.double(), zeros, 0)
            return torch.ops.quantized.linear_prepack(w, None)

    return _packed("fbgemm", q, pack)


# The int8 products as operators, so that torch.compile calls them as they are (Inductor cannot hold a library's
# packed weight). Registered plainly: a call costs 7-15 us of dispatch where torch.library.custom_op's costs 26, and a
# decoding step makes one per layer; eager code calls their functions directly. Inference only: no gradient.
_OPS = torch.library.Library("lmforge", "FRAGMENT")
_OPS.define("u8_product(Tensor x_u, Tensor q) -> Tensor")


def u8_product(x_u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x_u q^T for uint8 x_u (B, d) and int8 q (N, d), x_u in [0, 127] or q's pairs bounded (pairs_bounded): the exact
    int32 sums, in fp32. Up to GEMV_ROWS rows (batch-1 decoding) go to lmforge.kernels.native's loop where it is
    built. Up to FBGEMM_ROWS go to fbgemm,
    which streams a weight two to three times as fast as oneDNN's uint8 kernel on a Zen 3 (768 -> 2304: one row 90
    against 194 us, 8 rows 199 against 369; GPT-2's LM head: 1.6 against 4.2 ms, and 3.2 against 7.7). More rows
    (prompts, sentences) go to oneDNN, the faster from 64 rows on."""
    return torch.ops.lmforge.u8_product(x_u, q) if torch.compiler.is_compiling() else _u8_product(x_u, q)


def _u8_product(x_u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    if x_u.size(0) <= GEMV_ROWS and u8_gemv_runs():
        return u8_gemv(x_u, q)
    if x_u.size(0) <= FBGEMM_ROWS and fbgemm_runs():
        return _fbgemm_sums(x_u, q)
    return _onednn_sums(x_u, q)


def _onednn_sums(x_u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    ones, zeros = _unit_scales(q.size(0))
    return torch.ops.onednn.qlinear_pointwise(
        x_u, 1.0, 0, u8_packed(q), ones, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )


def _fbgemm_sums(x_u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x_u's integers on a grid of step 1 (exact), times the unit-scaled weight: the sums as they are."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x_u.float(), 1.0, 0, fbgemm_packed(q))


@functools.cache
def _unit_scales(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight scales (1) and zero points (0) that leave the int32 sums as they are, made once per size."""
    return torch.ones(n), torch.zeros(n, dtype=torch.long)


_OPS.impl("u8_product", _u8_product, "CPU")


@torch.library.register_fake("lmforge::u8_product", lib=_OPS)
def _(x_u, q) -> torch.Tensor:
    return x_u.new_empty((x_u.size(0), q.size(0)), dtype=torch.float32)


@asked_once
def fbgemm_runs() -> bool:
    """Whether torch has fbgemm's int8 linear and it gives the exact sums (checked once, on the products closest to
    saturating)."""
    if not is_x86() or "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        return sums_exact(_fbgemm_sums)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def int8_product(x_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x_q q^T in int32 for int8 x_q (B, d) and q (N, d) on a CPU with VNNI (or torch._int_mm's other fast CPUs);
    elsewhere (or without oneDNN) the same sums in fp32, exact while d * 127^2 stays below 2^24 and within fp32
    rounding above."""
    if x_q.device.type == "cpu" and int_mm_works():
        return torch.ops.lmforge.int8_product(x_q, q) if torch.compiler.is_compiling() else _int8_product(x_q, q)
    return x_q.float() @ q.float().t()


_OPS.define("int8_product(Tensor x_q, Tensor q) -> Tensor")


def _int8_product(x_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """torch._int_mm: oneDNN's int8 kernel, which reads a weight for a few rows (a decoding step) at a fifth of the
    bandwidth. On a 2-core Zen 4 GPT-2 small's weights take it 10.6 ms for one row, lmforge's C kernel 3.9 and
    fbgemm's 4.6 (as x_q + 128, x_q q^T = (x_q + 128) q^T - 128 sum(q), where q's pairs are bounded; its fp32 sums
    are exact below 2^24, and rounded as fp32 rounds them above)."""
    if x_q.size(0) <= FBGEMM_ROWS:  # each kernel's check says whether it runs here (x86 only)
        pairs_bounded, no_minus_128, row_sums = _traits(q)
        if x_q.size(0) <= GEMV_ROWS and no_minus_128 and i8_gemv_runs():
            return i8_gemv(x_q, q)
        if pairs_bounded and fbgemm_runs():
            return _fbgemm_sums(x_q.view(torch.uint8) ^ 128, q).to(torch.int32).sub_(row_sums, alpha=128)
    return torch._int_mm(x_q, q.t())


def _traits(q: torch.Tensor) -> tuple[bool, bool, torch.Tensor]:
    """Whether q's adjacent pairs are bounded, whether it holds no -128 (lmforge's rounding never makes one), and
    its rows' sums: looked up once per weight."""
    return _packed("traits", q, lambda: (pairs_bounded(q), bool(q.min() > -128), q.sum(1, dtype=torch.int32)))


_OPS.impl("int8_product", _int8_product, "CPU")


@torch.library.register_fake("lmforge::int8_product", lib=_OPS)
def _(x_q, q) -> torch.Tensor:
    return x_q.new_empty((x_q.size(0), q.size(0)), dtype=torch.int32)


class Int8Linear(nn.Module):
    """y = x W^T + b with W held as int8 rows and their fp32 scales and x rounded per row at run time.

    The state dict keeps nn.Linear's names: `weight` (int8), `bias` (fp32), plus `weight_scale` (fp32, one per
    output channel), `weight_sum` (fp32, each row's sum of int8 values: the offset's term) and, when smoothed,
    `input_scale` (fp32, c per input channel). Inference only: nothing here records a gradient. `u8_steps` is what
    an activation row is rounded to where the product is uint8 x int8 (CPUs without VNNI): 255 steps where the
    weight's adjacent pairs are bounded (quantize_rows(pair_bound=True)), else 127; set when the weight is rounded
    or loaded (a weight edited in place otherwise must be rounded again)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, smoothed: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("weight_sum", torch.zeros(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if smoothed else None)
        # 1 / input_scale, what each input row is multiplied by (a product costs a fraction of a division)
        self.register_buffer("input_reciprocal", torch.ones(in_features) if smoothed else None, persistent=False)
        self.u8_steps = 255

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, input_max: torch.Tensor | None = None, alpha: float = 0.5) -> Int8Linear:
        """The layer with linear's weights rounded to int8 (and its bias as it is); given input_max (the largest
        |x_j| seen per input channel in calibration), smoothed with exponent alpha."""
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, input_max is not None)
        if input_max is not None:
            tiny = 1e-5
            c = input_max.float().clamp_min(tiny) ** alpha / w.abs().amax(0).clamp_min(tiny) ** (1 - alpha)
            layer.input_scale = c.clamp_min(tiny).to(w.device)
            layer.input_reciprocal = layer.input_scale.reciprocal()
            w = w * layer.input_scale
        layer.weight, layer.weight_scale = quantize_rows(w, pair_bound=True)
        layer.weight_sum = layer.weight.sum(1, dtype=torch.int32).float()
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        return layer.to(linear.weight.device)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.u8_steps = 255 if pairs_bounded(self.weight) else U8_STEPS_UNBOUNDED  # e.g. a checkpoint from before
        if self.input_scale is not None:
            self.input_reciprocal = self.input_scale.reciprocal()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._outputs(x, slice(None))

    def rows(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """forward(x)[..., rows], computing only those outputs (cross-attention reads q, and k and v, from one
        fused layer)."""
        return self._outputs(x, rows)

    def _outputs(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        flat, weight = x.reshape(-1, self.in_features).float(), self.weight[rows]
        unsigned = flat.device.type == "cpu" and u8_product_works()
        bias = None if self.bias is None else self.bias[rows]
        args = (weight, unsigned, self.weight_scale[rows], self.weight_sum[rows], bias)
        # compiled, the temporaries are fused away; asked first, so that the compiler adds no guard on the row count
        if torch.compiler.is_compiling() or flat.size(0) <= CHUNK_ROWS:
            y = self._product(flat, *args)
        else:  # a long prompt or a batch of sentences: a chunk's temporaries stay in cache
            y = torch.empty(flat.size(0), weight.size(0), device=flat.device)
            for start in range(0, flat.size(0), CHUNK_ROWS):
                y[start : start + CHUNK_ROWS] = self._product(flat[start : start + CHUNK_ROWS], *args)
        return y.reshape(*x.shape[:-1], weight.size(0)).to(x.dtype)

    def _product(self, rows, weight, unsigned, weight_scale, weight_sum, bias) -> torch.Tensor:
        if self.input_reciprocal is not None:
            rows = rows * self.input_reciprocal
        x_q, s_x, offset = quantize_activations(rows, unsigned, self.u8_steps)
        sums = u8_product(x_q, weight) if unsigned else int8_product(x_q, weight)
        y = sums.float().addcmul_(offset, weight_sum).mul_(s_x)
        return y.mul_(weight_scale) if bias is None else torch.addcmul(bias, y, weight_scale)

    def extra_repr(self) -> str:
        kind = "int8, smoothed" if self.input_scale is not None else "int8"
        kind += "" if self.u8_steps == 255 else ", 7-bit activations without VNNI"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {kind}"


class Int8Embedding(nn.Module):
    """An embedding table held as int8 rows and their scales; a lookup returns the fp32 rows it rounds to."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, table: nn.Embedding) -> Int8Embedding:
        layer = cls(table.num_embeddings, table.embedding_dim)
        layer.weight, layer.weight_scale = quantize_rows(table.weight.detach().float())
        return layer.to(table.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float() * F.embedding(ids, self.weight_scale[:, None])
