"""The affine map y = x W^T + b, run by oneDNN where it beats torch's own product, in inference and training.

Decoding a token is one matrix-vector product per weight matrix, so its speed is the rate at which the weights are
read. Which fp32 CPU kernel reads them faster depends on the CPU and on the number of rows of x:
- on AMD, torch's product (MKL, on its generic code path there) runs a matrix-vector product on one thread, while
  oneDNN's splits it over torch's threads: oneDNN for every row count where the CPU has AVX-512 (MKL's generic path
  there is AVX2). Without AVX-512 (Zen 3) both are AVX2 kernels: oneDNN (its packed copy) up to 256 rows, MKL above,
  where it is 1.1-1.3x the faster (training: train_gpt's step 3.6-4.3 -> 2.9-3.4 s, char-small's 18% faster);
- on Intel, MKL for 1 and 2 rows (batch-1 decoding) and for thousands (a training LM head), oneDNN for 4 to 256
  rows (batched decoding and prompts);
- elsewhere torch's product. The measurements behind these choices are in docs/benchmarks.md.
Training runs the same choice: oneDNN's kernel has no backward, so `onednn_linear` below is an operator with one (the
input's gradient and the weight's are two more oneDNN products), which torch.compile keeps as one opaque call. On AMD
with AVX-512 it doubles the fp32 products of a training step (MKL takes its AVX2 path: 210 -> 480 GFLOP/s), with
the same sums on char-small's shapes (its losses are bit for bit those of torch's product). The weights, their layout
and the state dict are those of nn.Linear. A layer in evaluation mode that keeps being called with 2 rows or more
(batched decoding, beam search) on AMD also keeps oneDNN's blocked copy of its weight, so that oneDNN stops reordering
the weight at every call: the same products, bit for bit, in about half the time for 4 to 128 rows (a T5's LM head,
32 rows: 2.5 -> 1.3 ms), at the price of a second copy of that weight in memory; train() drops the copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.kernels.argmax import ArgmaxScreen, screens
from lmforge.kernels.cpu import cpu_vendor, has_avx512
from lmforge.kernels.native import transposed
from lmforge.kernels.state import weight_state

PACK_VENDORS = ("AuthenticAMD",)  # where the packed weight was measured to pay
PACK_AFTER = 3  # consecutive calls of 2+ rows before a layer packs its weight (a prompt alone does not)
PACK_ROWS_HINT = 32  # the row count oneDNN's weight layout is chosen for; any layout for 2+ rows gives the same sums


# rows of x (first, last) for which oneDNN's kernel is the faster, by CPU vendor and whether it has AVX-512; see the
# module's docstring
ONEDNN_ROWS = {
    ("AuthenticAMD", True): (1, 2**62),
    ("AuthenticAMD", False): (1, 256),
    ("GenuineIntel", True): (4, 256),
    ("GenuineIntel", False): (4, 256),
}


def _onednn_op():
    """oneDNN's linear where this build of torch has it, else None."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):  # a build without the op
        return None


_onednn_rows = ONEDNN_ROWS.get((cpu_vendor(), has_avx512()))
_onednn_linear = _onednn_op() if _onednn_rows else None
_packs = cpu_vendor() in PACK_VENDORS and _onednn_linear is not None


# CPUs (vendor, AVX-512) whose torch product forms an LM head's logits x W^T slowly and W x^T at full rate: on a
# Zen 3, 2048 tokens x 384 -> 50257 words took 784 ms against 550 (MKL's AVX2 path on AMD), a whole loss step at
# 512 x 768 -> 50257 words 1.49 s rows first against 1.23 (another Zen 3 host measured the opposite, 1.02 against
# 1.46: one such product alone swung by 1.5x from call to call). Small vocabularies go rows first on every host
# measured, where the C softmax applies: char-small's 65 letters 0.93 against 1.08 and 1.12 against 1.75 ms, 1001
# words 6.7 against 8.0
VOCAB_MAJOR = {("AuthenticAMD", False)}
VOCAB_MAJOR_MIN = 1536  # the fewest words for which the vocabulary-first logits may pay (at 2047 words: even)


def vocab_major_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a fused LM-head loss should form its logits vocabulary first, W x^T: fp32 on such a CPU, where torch's
    product takes the rows of x (not oneDNN's), no autocast applies, and the vocabulary is large."""
    if weight.size(0) < VOCAB_MAJOR_MIN or (cpu_vendor(), has_avx512()) not in VOCAB_MAJOR:
        return False
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return False
    return x.dtype == weight.dtype == torch.float32 and not _onednn_applies(x.reshape(-1, x.size(-1)), weight, bias)


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """fp32 CPU tensors (any strides, but a contiguous bias: the op ignores a bias's strides) and no autocast."""
    if _onednn_linear is None or x.dim() < 2:
        return False
    first, last = _onednn_rows  # set wherever _onednn_linear is; checked first: it rules out batch-1 decoding on Intel
    if not first <= x.numel() // max(x.size(-1), 1) <= last:
        return False
    if x.device.type != "cpu" or not x.dtype == weight.dtype == torch.float32:
        return False
    if bias is not None and not bias.is_contiguous():
        return False
    return not torch.is_autocast_enabled("cpu")


def _records_grad(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    tracked = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    return tracked and torch.is_grad_enabled()


@torch.library.custom_op("lmforge::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b on oneDNN, as an operator with a gradient (training) that torch.compile keeps whole."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.size(0)))


def _save(ctx, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T on oneDNN in a backward: the bare kernel, unless that backward is itself recorded (create_graph) or
    traced by torch.compile, which take the operator."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return onednn_linear(x, weight, None)
    return _onednn_linear(x, weight, None, "none", [], "")


def _transposed(m: torch.Tensor) -> torch.Tensor:
    """m^T where it will be copied to contiguous anyway (by torch before oneDNN's kernel reads its first operand; by
    autograd before a transposed weight gradient becomes the parameter's .grad): in a backward lmforge's native copy,
    3-5x faster than torch's (as an operator in a compiled one); the view where the backward is itself recorded."""
    if torch.is_grad_enabled():  # a recorded backward: the view keeps second derivatives
        return m.t()
    return torch.ops.lmforge.transposed(m) if torch.compiler.is_compiling() else transposed(m)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad^T x, (out, in), as oneDNN's product whose output side is the wider one (measured 1.2-1.4x faster)."""
    if grad.size(1) >= x.size(1):
        return _product(_transposed(x), grad.t()).t()
    return _product(_transposed(grad), x.t())


def weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad^T x, (out, in): the weight's gradient of `linear(x, W)`, on the kernel that takes x's rows. torch's
    product reads grad transposed (a Zen 3's LM head: 507 against 716 ms as (x^T grad)^T)."""
    if _onednn_applies(x, grad, None):
        return _weight_grad(grad, x)
    return grad.t() @ x


def linear_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, needs: tuple) -> tuple:
    """The gradients of `linear(x, W, b)` for grad and x of 2 dimensions (grad contiguous), on the kernel that ran its
    forward; needs (x's, W's, b's) says which to compute, None for the others."""
    if not _onednn_applies(x, weight, None):
        grad_x = grad @ weight if needs[0] else None
        return grad_x, weight_grad(grad, x) if needs[1] else None, grad.sum(0) if needs[2] else None
    return _onednn_backward(grad, x, weight, needs)


def _onednn_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, needs: tuple) -> tuple:
    grad_x = grad_w = grad_b = None
    if needs[0]:
        grad_x = _product(grad, weight.t())  # oneDNN reads the strided weight as fast as a transposed copy
    if needs[1]:
        grad_w = _weight_grad(grad, x)
        if not grad_w.is_contiguous():  # transposed: autograd would copy it into the parameter's .grad
            grad_w = _transposed(grad_w.t())
    if needs[2]:  # False without a bias
        grad_b = grad.sum(0)
    return grad_x, grad_w, grad_b


def _backward(ctx, grad: torch.Tensor) -> tuple:
    x, weight = ctx.saved_tensors
    grad = grad.reshape(-1, grad.size(-1)).contiguous()  # an expanded gradient (of a sum) has zero strides
    grad_x, grad_w, grad_b = _onednn_backward(grad, x.reshape(-1, x.size(-1)), weight, ctx.needs_input_grad)
    return None if grad_x is None else grad_x.view(x.shape), grad_w, grad_b


onednn_linear.register_autograd(_backward, setup_context=_save)


class _OnednnLinear(torch.autograd.Function):
    """onednn_linear's eager twin: the same forward and backward without the operator's dispatch, which cost about
    50 us a call (char-small's eager step makes 49 of them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn_linear(x, weight, bias, "none", [], "")

    backward = staticmethod(_backward)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), on oneDNN where it applies."""
    if _onednn_applies(x, weight, bias):
        if torch.compiler.is_compiling():  # the operator torch.compile keeps whole
            return onednn_linear(x, weight, bias)
        if _records_grad(x, weight, bias):
            return _OnednnLinear.apply(x, weight, bias)
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _weight_key(weight: torch.Tensor) -> tuple:
    """Changes when the weight does, or is another tensor."""
    return id(weight), *weight_state(weight)


class Linear(nn.Linear):
    """nn.Linear (same parameters and initialization) whose inference runs `linear` above; what
    lmforge.kernels.apply_kernels turns a model's nn.Linear layers into."""

    _argmax_screen: ArgmaxScreen | None = None  # the int8 copy behind `argmax`, built on its first use
    _packed: tuple[tuple, torch.Tensor] | None = None  # (weight key, oneDNN's blocked copy of the weight)
    _multi_row_calls = 0  # consecutive calls with 2+ rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _records_grad(x, self.weight, self.bias):
            self._packed, self._argmax_screen = None, None  # a training step, even in eval mode: the weight will change
            self._multi_row_calls = 0
        elif (
            _packs
            and not self.training
            and x.numel() >= 2 * x.size(-1) > 0
            and _onednn_applies(x, self.weight, self.bias)
            and not torch.compiler.is_compiling()
        ):
            packed = self._packed_weight()
            if packed is not None:
                return _onednn_linear(x, packed, self.bias, "none", [], "")
        else:
            self._multi_row_calls = 0
        return linear(x, self.weight, self.bias)

    def train(self, mode: bool = True) -> Linear:
        """Entering training mode drops the packed copy and the argmax screen: training changes the weight, and the
        fused AdamW step leaves its version counter as it was, so the counter cannot tell that a copy is stale.
        eval() keeps them, so repeated generation calls (each sets evaluation mode) reuse them."""
        if mode:
            self._packed, self._argmax_screen, self._multi_row_calls = None, None, 0
        return super().train(mode)

    def __getstate__(self) -> dict:
        """The state without the packed copy: oneDNN's opaque tensors can be neither copied nor saved."""
        state = self.__dict__.copy()
        state.pop("_packed", None)
        return state

    def _packed_weight(self) -> torch.Tensor | None:
        """oneDNN's blocked copy of the weight as it is now, made once the layer has been called PACK_AFTER times in a
        row with 2+ rows (one row runs a matrix-vector kernel whose sums differ from the packed one's)."""
        key = _weight_key(self.weight)
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        self._multi_row_calls += 1
        if self._multi_row_calls < PACK_AFTER:
            return None
        self._packed = key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACK_ROWS_HINT)
        return self._packed[1]

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """self(x).argmax(-1) for x (B, in_features), from an int8 screen where that reads fewer bytes (greedy
        decoding: see lmforge.kernels.argmax)."""
        rows = None
        if screens(x, self.weight, self.bias):
            if self._argmax_screen is None or not self._argmax_screen.fits(self.weight):
                self._argmax_screen = ArgmaxScreen(self.weight)
            rows = self._argmax_screen.candidates(x)
        if rows is None:
            return self(x).argmax(dim=-1)
        return rows[linear(x, self.weight.index_select(0, rows)).argmax(dim=-1)]
