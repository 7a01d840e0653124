"""C kernels for x86 CPUs (kernels/native.c), built on first use with the C compiler that torch.compile needs anyway:
the int8 and bf16 products of a decoding step's few rows, a transposing copy for training's oneDNN products, and
causal self-attention with rotary positions for training.
Where there is no compiler or no AVX2, or LMFORGE_NATIVE_KERNELS=0, torch's and oneDNN's own kernels run instead:
these kernels change the speed, never the int8 sums or a copy's values (bf16 sums are fp32's, added in another
order; attention's are fp32's, its exponentials within 2 ulp)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.atomic import TMP
from lmforge.cache import cache_root
from lmforge.kernels.cpu import has_avx2, is_x86
from lmforge.kernels.once import asked_once

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ["-O3", "-mavx2", "-fopenmp", "-shared", "-fPIC"]  # OpenMP: the libgomp torch has loaded, one thread pool


def cache_dir() -> Path:
    return cache_root() / "kernels"


def build(source: Path, folder: Path) -> Path:
    """The shared library of source, compiled once per source text, compiler and flags, and written under a
    temporary name then renamed, so that a process never loads a half-written one."""
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]  # "ccache gcc"
    if compiler[0] is None:
        raise OSError("no C compiler (cc, gcc or $CC)")
    digest = hashlib.sha256("\0".join([source.read_text(encoding="utf-8"), *compiler, *FLAGS]).encode()).hexdigest()
    library = folder / f"{source.stem}-{digest[:16]}.so"
    if not library.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{TMP}{library.name}.{os.getpid()}"
        try:
            subprocess.run(
                [*compiler, *FLAGS, str(source), "-lm", "-o", str(tmp)], check=True, capture_output=True, timeout=300
            )
            os.replace(tmp, library)
        finally:
            tmp.unlink(missing_ok=True)
    return library


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        library = build(SOURCE, cache_dir())
    except PermissionError:  # a read-only home: built for this process alone
        library = build(SOURCE, Path(tempfile.mkdtemp(prefix="lmforge-kernels-")))
    loaded = ctypes.CDLL(str(library))
    for kernel in (loaded.u8_gemv, loaded.i8_gemv, loaded.bf16_gemv):
        kernel.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        kernel.restype = None
    loaded.f32_transpose.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    loaded.f32_transpose.restype = None
    pointers, sizes, last = [ctypes.c_void_p] * 5, [ctypes.c_int64] * 4, [ctypes.c_float, ctypes.c_int]
    loaded.f32_causal_attention.argtypes = pointers + sizes + last
    loaded.f32_causal_attention_backward.argtypes = pointers + [ctypes.c_void_p] * 2 + sizes + last
    loaded.f32_causal_attention.restype = loaded.f32_causal_attention_backward.restype = ctypes.c_int
    loaded.f32_adamw.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64, ctypes.c_float, ctypes.c_int]
    loaded.f32_sum_squares.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
    loaded.f32_adamw.restype = loaded.f32_sum_squares.restype = ctypes.c_int
    loaded.f32_gelu.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    loaded.f32_gelu.restype = None
    loaded.f32_add_layer_norm.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 2 + [ctypes.c_float, ctypes.c_int]
    loaded.f32_add_layer_norm.restype = None
    loaded.f32_layer_norm_backward.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    loaded.f32_layer_norm_backward.restype = ctypes.c_int
    loaded.f32_softmax_cross_entropy.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [
        ctypes.c_float, ctypes.c_int, *[ctypes.c_void_p] * 4, ctypes.c_int,
    ]  # fmt: skip
    loaded.f32_softmax_cross_entropy.restype = ctypes.c_int
    return loaded


def u8_gemv(x_u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x_u q^T for x_u (B, d) uint8 and q (N, d) int8, x_u in [0, 127] or q's adjacent pairs bounded
    (|q_2i| + |q_2i+1| <= 128): the exact int32 sums, in fp32. Fastest for one to three rows; ctypes lets other
    threads run meanwhile."""
    return _gemv(_library().u8_gemv, x_u, torch.uint8, q, torch.int8, torch.float32)


def i8_gemv(x_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x_q q^T in int32 for x_q (B, d) int8 and q (N, d) int8 in [-127, 127] (as lmforge rounds weights): exact for
    every such weight, pairs bounded or not."""
    return _gemv(_library().i8_gemv, x_q, torch.int8, q, torch.int8, torch.int32)


def bf16_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x w^T in fp32 for x (B, d) fp32 holding bf16 values (x.bfloat16().float()) and w (N, d) bf16: each product
    exact, the sums fp32's. A decoding step's one row: 7.2 ms over GPT-2 small's layers on a 2-core Zen 4, where
    oneDNN's packed bf16 product takes 10.8."""
    return _gemv(_library().bf16_gemv, x, torch.float32, w, torch.bfloat16, torch.float32)


def _gemv(kernel, x: torch.Tensor, x_dtype: torch.dtype, q: torch.Tensor, q_dtype: torch.dtype,
          out_dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
    if x.dtype != x_dtype or q.dtype != q_dtype or x.dim() != 2 or q.dim() != 2 or x.size(1) != q.size(1):
        x_name, q_name = (str(t).removeprefix("torch.") for t in (x_dtype, q_dtype))
        raise ValueError(f"{kernel.__name__} takes {x_name} (B, d) and {q_name} (N, d), not {x.dtype} "
                         f"{tuple(x.shape)} and {q.dtype} {tuple(q.shape)}")  # fmt: skip
    x, q = x.contiguous(), q.contiguous()
    out = torch.empty(x.size(0), q.size(0), dtype=out_dtype)
    kernel(x.data_ptr(), q.data_ptr(), out.data_ptr(), x.size(0), *q.shape, torch.get_num_threads())
    return out


def transposed(x: torch.Tensor) -> torch.Tensor:
    """x^T as a contiguous tensor, for a 2-D fp32 x whose rows are contiguous (any row stride): the copy
    x.t().contiguous() makes, 3-5x faster (768 x 128: 98 -> 19 us on a 2-core Zen 4). torch's copy where the kernel
    does not run here or x is another kind of tensor."""
    plain = x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2 and x.stride(1) == 1
    if not plain or x.numel() == 0 or not f32_transpose_runs():
        return x.t().contiguous()
    return _f32_transpose(x)


def _f32_transpose(x: torch.Tensor) -> torch.Tensor:
    """The C kernel's copy of x^T, unchecked: x is 2-D fp32 on the CPU with contiguous rows."""
    out = x.new_empty(x.size(1), x.size(0))
    _library().f32_transpose(x.data_ptr(), out.data_ptr(), *x.shape, x.stride(0), torch.get_num_threads())
    return out


def causal_attention(
    qkv: torch.Tensor, cos2: torch.Tensor | None, sin2: torch.Tensor | None, heads: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal self-attention of a fused projection qkv (B, T, 3 * heads * d: the query heads, then the key and value
    heads), with rotary positions where RotaryEmbedding's tables cos2 and sin2 (T, d) are given: the heads' outputs
    side by side (B, T, heads * d), and each query's log-sum-exp (B, heads, T) for the backward. Unchecked: fp32
    contiguous CPU tensors, d a multiple of 8 (kernels.attention decides where it runs)."""
    b, t, width = qkv.shape
    d = width // (3 * heads)
    y, lse = qkv.new_empty(b, t, heads * d), qkv.new_empty(b, heads, t)
    _scratch_had(_library().f32_causal_attention(
        qkv.data_ptr(), _address(cos2), _address(sin2), y.data_ptr(), lse.data_ptr(), b, t, heads, d, scale,
        torch.get_num_threads(),
    ))  # fmt: skip
    return y, lse


def causal_attention_backward(
    qkv: torch.Tensor,
    cos2: torch.Tensor | None,
    sin2: torch.Tensor | None,
    y: torch.Tensor,
    grad_y: torch.Tensor,
    lse: torch.Tensor,
    heads: int,
    scale: float,
) -> torch.Tensor:
    """The gradient of causal_attention's y with respect to qkv, given grad_y (contiguous, y's shape): each row's
    probabilities are computed again from qkv and lse, as flash attention's backward does."""
    b, t, width = qkv.shape
    grad = torch.empty_like(qkv)
    _scratch_had(_library().f32_causal_attention_backward(
        qkv.data_ptr(), _address(cos2), _address(sin2), y.data_ptr(), grad_y.data_ptr(), lse.data_ptr(),
        grad.data_ptr(), b, t, heads, width // (3 * heads), scale, torch.get_num_threads(),
    ))  # fmt: skip
    return grad


def _scratch_had(status: int, kernel: str = "the attention kernel", size: str = "up to 1 MB a thread") -> None:
    if status:
        raise MemoryError(f"{kernel} could not allocate its scratch memory ({size})")


class AdamwGroup(ctypes.Structure):
    """A tensor's AdamW hyperparameters, as f32_adamw reads them."""

    _fields_ = [(name, ctypes.c_double) for name in ("lr", "weight_decay", "beta1", "beta2", "eps")]


def adamw_step(tensors: list[tuple[torch.Tensor, ...]], groups: list[AdamwGroup], scale: float) -> None:
    """One AdamW step, torch.optim.AdamW's arithmetic, of every (param, grad, exp_avg, exp_avg_sq, step) in tensors,
    each with its group's hyperparameters, the gradients divided by scale; the step counts (fp32 scalars, as torch
    keeps them) are counted up first. Unchecked: fp32 contiguous CPU tensors (kernels.optim decides where it runs)."""
    n = len(tensors)
    pointers = [(ctypes.c_void_p * n)(*(row[i].data_ptr() for row in tensors)) for i in range(5)]
    sizes = (ctypes.c_int64 * n)(*(row[0].numel() for row in tensors))
    status = _library().f32_adamw(*pointers, sizes, (AdamwGroup * n)(*groups), n, scale, torch.get_num_threads())
    _scratch_had(status, "the AdamW kernel", f"a list of {n} tensors' pieces")


def sum_squares(tensors: list[torch.Tensor]) -> float:
    """The sum of the squares of every element of tensors (fp32 contiguous CPU, unchecked), each 8192-element piece's
    in fp32 and theirs in double in order: the same on any number of threads."""
    n, total = len(tensors), ctypes.c_double()
    sizes = (ctypes.c_int64 * n)(*(x.numel() for x in tensors))
    pointers = (ctypes.c_void_p * n)(*(x.data_ptr() for x in tensors))
    status = _library().f32_sum_squares(pointers, sizes, n, torch.get_num_threads(), ctypes.byref(total))
    _scratch_had(status, "the sum of squares", f"a list of {n} tensors' pieces")
    return total.value


def gelu_and_slope(u: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(u), exact (erf's) or with approximate="tanh" its tanh form (F.gelu's arguments), with u overwritten by
    GELU'(u): the gradient then needs one product, no erf or exponential. Unchecked: u fp32, contiguous, on the
    CPU."""
    a = torch.empty_like(u)
    tanh_form = int(approximate == "tanh")
    _library().f32_gelu(u.data_ptr(), a.data_ptr(), u.data_ptr(), u.numel(), tanh_form, torch.get_num_threads())
    return a


def add_layer_norm(
    a: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, n, mean, rstd): h = a + residual, written over a (a itself without a residual), and n its layer norm over
    the last dimension, with each row's mean and 1 / sqrt(variance + eps) as torch.native_layer_norm keeps them.
    Unchecked: 2-D fp32 contiguous CPU tensors, rows a multiple of 8 wide."""
    rows, d = a.shape
    n, mean, rstd = torch.empty_like(a), a.new_empty(rows), a.new_empty(rows)
    _library().f32_add_layer_norm(
        a.data_ptr(), _address(residual), a.data_ptr(), n.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
        weight.data_ptr(), _address(bias), rows, d, eps, torch.get_num_threads(),
    )  # fmt: skip
    return a, n, mean, rstd


def layer_norm_backward(
    grad_n: torch.Tensor,
    h: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None,
    bias_grad: bool,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The gradients of add_layer_norm's n with respect to h (plus residual where given; written into out, which may
    be residual, where given), the weight and the bias (where bias_grad); the weight's and bias's sums the same on
    any number of threads. Unchecked, as add_layer_norm: 2-D fp32 contiguous CPU tensors, rows a multiple of 8
    wide."""
    rows, d = h.shape
    grad_h = out if out is not None else torch.empty_like(h)
    grad_w, grad_b = weight.new_empty(d), weight.new_empty(d) if bias_grad else None
    _scratch_had(_library().f32_layer_norm_backward(
        grad_n.data_ptr(), h.data_ptr(), mean.data_ptr(), rstd.data_ptr(), weight.data_ptr(), _address(residual),
        grad_h.data_ptr(), grad_w.data_ptr(), _address(grad_b), rows, d, torch.get_num_threads(),
    ), "the layer norm's gradient", "its pieces' sums")  # fmt: skip
    return grad_h, grad_w, grad_b


def softmax_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, smoothing: float, grad: bool, top: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(log-sum-exp, target logit, mean logit or None, index of the largest logit or None) of each row of logits
    (rows, V) against targets, the loss summed with weights scale (0: an ignored row); where grad is set the logits
    become that loss's gradient, scale (softmax - (1 - smoothing) onehot - smoothing / V), in one pass of their own.
    Unchecked: fp32 contiguous CPU logits and scale, int64 contiguous targets."""
    rows, v = logits.shape
    lse, logit_t = logits.new_empty(rows), logits.new_empty(rows)
    mean = logits.new_empty(rows) if smoothing else None
    index = torch.empty(rows, dtype=torch.int64) if top else None
    status = _library().f32_softmax_cross_entropy(
        logits.data_ptr(), targets.data_ptr(), scale.data_ptr(), rows, v, smoothing, int(grad), lse.data_ptr(),
        logit_t.data_ptr(), _address(mean), _address(index), torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise IndexError(f"a target is outside the vocabulary of {v} tokens")
    return lse, logit_t, mean, index


def _address(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


# the copy as an operator, so that a compiled backward calls it as it is (Inductor would write its own transposing
# loop); registered plainly, as lmforge.kernels.int8's products are. No gradient: only backwards call it.
_OPS = torch.library.Library("lmforge", "FRAGMENT")
_OPS.define("transposed(Tensor x) -> Tensor")
_OPS.impl("transposed", transposed, "CPU")


@torch.library.register_fake("lmforge::transposed", lib=_OPS)
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.size(1), x.size(0)))


@asked_once
def f32_transpose_runs() -> bool:
    """Whether the transposing copy is built here and gives torch's: shapes on and off its 8 x 8 blocks and 32 x 32
    tiles, one with a row stride wider than its rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(77, 70, generator=g)
    cases = (x, x[:64, :32].contiguous(), x[3:, 5:45], x[:1], x[:, :1])
    return _checked(lambda: all(torch.equal(_f32_transpose(m), m.t()) for m in cases))


@asked_once
def causal_attention_runs() -> bool:
    """Whether the attention kernel is built here and gives softmax(QK^T / sqrt(d) + causal mask) V and its gradient
    within fp32 rounding of fp64's: 13 positions (a tail past 8) of two 16-column heads with rotary tables, and 9
    positions of one 8-column head without."""
    g = torch.Generator().manual_seed(0)

    def close(b: int, t: int, heads: int, d: int, rotary: bool) -> bool:
        qkv, grad_y = torch.randn(b, t, 3 * heads * d, generator=g), torch.randn(b, t, heads * d, generator=g)
        angles = torch.rand(t, d // 2, generator=g) * 6
        cos2, sin2 = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((-angles.sin(), angles.sin()), -1)
        tables = (cos2, sin2) if rotary else (None, None)
        y, lse = causal_attention(qkv, *tables, heads, d**-0.5)
        grad = causal_attention_backward(qkv, *tables, y, grad_y, lse, heads, d**-0.5)
        exact = qkv.double().requires_grad_()
        q, k, v = (z.view(b, t, heads, d).transpose(1, 2) for z in exact.chunk(3, dim=-1))
        if rotary:
            q, k = ((z * cos2 + torch.cat(z.chunk(2, dim=-1)[::-1], -1) * sin2) for z in (q, k))
        scores = (q @ k.transpose(-2, -1) * d**-0.5).masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
        reference = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        (reference * grad_y.double()).sum().backward()  # a scalar's backward: an explicit gradient imports sympy
        return torch.allclose(y.double(), reference, atol=1e-5) and torch.allclose(grad.double(), exact.grad, atol=1e-5)

    with torch.inference_mode(False), torch.enable_grad():  # asked first, maybe, under no_grad or inference_mode
        return _checked(lambda: close(2, 13, 2, 16, True) and close(1, 9, 1, 8, False))


@asked_once
def adamw_runs() -> bool:
    """Whether the AdamW kernel is built here and takes AdamW's steps (Loshchilov and Hutter; torch.optim.AdamW's
    formula) within fp32 rounding of fp64's: three steps over tensors of 1, 13 and 8197 elements (a tail past 8-wide
    steps and a second piece) with and without weight decay, the gradients divided by 2."""
    g = torch.Generator().manual_seed(0)
    shapes = ((1,), (13,), (8197,))
    hyper = ((1e-2, 0.1, 0.9, 0.99, 1e-8), (3e-3, 0.0, 0.8, 0.95, 1e-6), (1e-2, 0.1, 0.9, 0.99, 1e-8))

    def close() -> bool:
        mine = [torch.randn(s, generator=g) for s in shapes]
        exact = [(p.double(), torch.zeros(p.shape, dtype=torch.float64), torch.zeros(p.shape, dtype=torch.float64))
                 for p in mine]  # fmt: skip
        state = [(torch.zeros_like(p), torch.zeros_like(p), torch.zeros(())) for p in mine]
        for step in range(1, 4):
            grads = [torch.randn(s, generator=g) for s in shapes]
            rows = [(p, grad, *st) for p, grad, st in zip(mine, grads, state, strict=True)]
            adamw_step(rows, [AdamwGroup(*h) for h in hyper], 2.0)
            for (p, m, v), grad, (lr, decay, beta1, beta2, eps) in zip(exact, grads, hyper, strict=True):
                grad = grad.double() / 2
                p.mul_(1 - lr * decay)
                m.mul_(beta1).add_((1 - beta1) * grad)
                v.mul_(beta2).add_((1 - beta2) * grad**2)
                p.sub_(lr / (1 - beta1**step) * m / (v.sqrt() / math.sqrt(1 - beta2**step) + eps))
        return all(torch.allclose(p.double(), e[0], rtol=1e-5, atol=1e-6) for p, e in zip(mine, exact, strict=True))

    return _checked(close)


@asked_once
def sum_squares_runs() -> bool:
    """Whether the sum of squares is built here and gives fp64's to fp32 rounding, over tensors of 0, 1, 13 and 8197
    elements (a tail past 16-wide steps and a second piece)."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, generator=g) for n in (0, 1, 13, 8197)]
    exact = sum(float(x.double().square().sum()) for x in xs)
    return _checked(lambda: abs(sum_squares(xs) - exact) <= 1e-5 * exact)


@asked_once
def gelu_runs() -> bool:
    """Whether the GELU kernel is built here and gives GELU and its derivative, exact and tanh form, within fp32
    rounding of fp64's (torch's own fp32 GELU is as far), over 8203 values (a second piece, a tail past 8-wide steps)
    from -12 to 12, with a NaN staying NaN."""
    u = torch.linspace(-12, 12, 8203)
    u[77] = float("nan")
    return _checked(lambda: all(_gelu_is_close(u, approximate) for approximate in ("none", "tanh")))


def _gelu_is_close(u: torch.Tensor, approximate: str) -> bool:
    """Whether gelu_and_slope gives F.gelu(u, approximate=approximate) and its derivative within 1e-6 (relative and
    absolute) of fp64's; NaN where u is."""
    exact = u.double().requires_grad_()
    with torch.enable_grad(), torch.inference_mode(False):
        a = torch.nn.functional.gelu(exact, approximate=approximate)
        (slope,) = torch.autograd.grad(a.sum(), exact)
    derivative = u.clone()
    mine = gelu_and_slope(derivative, approximate)
    close = functools.partial(torch.allclose, rtol=1e-6, atol=1e-6, equal_nan=True)
    return close(mine.double(), a.detach()) and close(derivative.double(), slope)


@asked_once
def layer_norm_runs() -> bool:
    """Whether the layer-norm kernels are built here and give torch's layer norm of a + residual and its gradients
    (plus a residual gradient) within fp32 rounding of fp64's: 45 rows (a second piece of rows) of 24 columns, with
    and without a bias."""
    g = torch.Generator().manual_seed(0)

    def close(bias: bool) -> bool:
        a, residual, grad_n, grad_res = (torch.randn(45, 24, generator=g) for _ in range(4))
        weight, b = torch.randn(24, generator=g), torch.randn(24, generator=g) if bias else None
        h, n, mean, rstd = add_layer_norm(a.clone(), residual, weight, b, 1e-5)
        grads = layer_norm_backward(grad_n, h, mean, rstd, weight, grad_res, bias)
        exact = [z.double().requires_grad_() for z in (a + residual, weight, *([b] if bias else []))]
        with torch.enable_grad(), torch.inference_mode(False):
            reference = torch.nn.functional.layer_norm(exact[0], (24,), exact[1], exact[2] if bias else None, 1e-5)
            expected = torch.autograd.grad((reference * grad_n.double()).sum(), exact)
        pairs = [(n, reference.detach()), (grads[0], expected[0] + grad_res.double())]
        pairs += zip(grads[1 : len(expected)], expected[1:], strict=True)
        return all(torch.allclose(mine.double(), want, rtol=1e-5, atol=1e-5) for mine, want in pairs)

    return _checked(lambda: close(True) and close(False))


@asked_once
def softmax_cross_entropy_runs() -> bool:
    """Whether the softmax cross-entropy kernel is built here and gives F.cross_entropy's loss and gradient with and
    without label smoothing, each row's top logit and mean logit, within fp32 rounding of fp64's: 5 rows (one ignored)
    of 21 logits (a tail past 8-wide steps)."""
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(5, 21, generator=g) * 4, torch.randint(0, 21, (5,), generator=g)
    scale = torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25])

    def close(smoothing: float) -> bool:
        grad = logits.clone()
        lse, logit_t, mean, top = softmax_cross_entropy(grad, targets, scale, smoothing, True, True)
        exact = logits.double().requires_grad_()
        with torch.enable_grad(), torch.inference_mode(False):
            losses = torch.nn.functional.cross_entropy(exact, targets, reduction="none", label_smoothing=smoothing)
            (expected,) = torch.autograd.grad((losses * scale.double()).sum(), exact)
        counted = scale > 0
        mine = (1 - smoothing) * (lse - logit_t) + smoothing * (lse - (mean if smoothing else 0))
        pairs = [
            (grad, expected),
            (mine[counted], losses[counted].detach()),
            (lse[~counted], torch.zeros(1)),
            (top.double(), logits.argmax(-1).double()),
        ] + ([(mean[counted], logits.mean(-1)[counted])] if smoothing else [])
        return all(torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6) for a, b in pairs)

    return _checked(lambda: close(0.0) and close(0.1))


@asked_once
def i8_gemv_runs() -> bool:
    """Whether the int8 x int8 kernel is built here and gives the exact sums: -128 and 127 against +-127, over 45
    columns (a tail past 32-byte steps), for 1, 2 and 5 rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (5, 45), dtype=torch.int8, generator=g)
    q = torch.randint(-127, 128, (7, 45), dtype=torch.int8, generator=g)
    x[0], x[1, ::2], q[0], q[1, 1::2] = -128, 127, 127, -127
    return _checked(lambda: all(torch.equal(i8_gemv(x[:m], q), x[:m].int() @ q.int().T) for m in (1, 2, 5)))


@asked_once
def bf16_gemv_runs() -> bool:
    """Whether the bf16 kernel is built here and gives the right sums: small integers (exact in bf16 and in fp32's
    sums) over 45 columns (a tail past 16-value steps), for 1, 2 and 5 rows."""
    g = torch.Generator().manual_seed(0)
    x, w = (torch.randint(-8, 9, shape, generator=g).float() for shape in ((5, 45), (7, 45)))
    return _checked(lambda: all(torch.equal(bf16_gemv(x[:m], w.bfloat16()), x[:m] @ w.T) for m in (1, 2, 5)))


@asked_once
def u8_gemv_runs() -> bool:
    """Whether the uint8 x int8 kernel is built here and gives the exact sums (checked once, by sums_exact)."""
    return _checked(lambda: sums_exact(u8_gemv))


def _checked(check: Callable[[], bool]) -> bool:
    """check(), run where the kernels may be built (x86 with AVX2, not turned off); False where they cannot be."""
    if os.environ.get("LMFORGE_NATIVE_KERNELS", "1") == "0" or not (is_x86() and has_avx2()):
        return False
    try:
        return check()
    except (OSError, subprocess.SubprocessError, AttributeError):
        return False


def sums_exact(product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """Whether product(x_u, q), a uint8 x int8 kernel that may add pairs of products in int16, gives the exact sums
    on the inputs closest to saturating it: 255 against adjacent pairs of 128 (127 and 1, each sign), and 127 against
    pairs of 127s, over 45 columns (a tail past 32-byte steps, an odd last one), for 1, 2 and 5 rows. A kernel that
    paired other columns (2i with 2i + 2, or 2i + 1 with 2i + 2) would saturate on the first."""
    g = torch.Generator().manual_seed(0)
    d = 45
    pair, zig = (torch.tensor((pattern * d)[:d], dtype=torch.int8) for pattern in ([127, 1], [127, 1, 1, 127]))
    big = torch.full((d,), 127, dtype=torch.int8)
    q = torch.stack([pair, -pair, zig, -zig, torch.randint(-64, 65, (d,), dtype=torch.int8, generator=g)])
    x_full = torch.cat([torch.full((2, d), 255, dtype=torch.uint8), torch.randint(0, 256, (3, d), dtype=torch.uint8,
                                                                                   generator=g)])  # fmt: skip
    x_7 = torch.full((2, d), 127, dtype=torch.uint8)
    cases = [(x_full[:1], q), (x_full, q), (x_7, torch.stack([big, -big, *q]))]
    return all(torch.equal(product(x_u, w), (x_u.long() @ w.long().t()).float()) for x_u, w in cases)
