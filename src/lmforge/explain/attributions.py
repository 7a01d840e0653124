"""Why a classifier decided what it decided: integrated-gradients attributions per token and attention maps per
layer and head, written as PNG heatmaps and one self-contained HTML page.

A classifier here is any module with a `backbone` (any family's) and forward(input_ids, attention_mask,
token_type_ids=None) -> logits, (B, n_labels) for a sequence task or (B, T, n_labels) for a token task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.atomic import check_output_dir
from lmforge.checkpoint.loader import load_finetuned
from lmforge.data.labelled import Example
from lmforge.errors import LmforgeError
from lmforge.explain.explanation import Explanation
from lmforge.explain.html import write_html
from lmforge.kernels.quantize import is_quantized
from lmforge.plots import plot_attention, plot_attributions
from lmforge.tasks.classification import encode_classification
from lmforge.tokenizer import Tokenizer

Target = int | tuple[int, int]  # a class index (sequence task) or (position, class index) (token task)
UNLIMITED = 1 << 30  # a length no text reaches: encode without truncation
MAX_STEPS = 1000  # Gauss-Legendre nodes come from an N x N eigenproblem: 100,000 steps would need 75 GiB


def word_embedding(backbone: nn.Module) -> nn.Embedding:
    """The token table whose output integrated gradients interpolates (every family's `input_embeddings`)."""
    return backbone.input_embeddings


def _score(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The explained scalar per batch row: the target's logit (at the target position for a token task)."""
    if isinstance(target, tuple):
        position, label = target
        return logits[:, position, label]
    return logits[:, target]


@contextlib.contextmanager
def _output_replaced(module: nn.Module, value: torch.Tensor):
    """Within the block, module(...) returns value: how IG swaps in interpolated embeddings without editing a model."""
    handle = module.register_forward_hook(lambda _module, _args, _output: value)
    try:
        yield
    finally:
        handle.remove()


def integrated_gradients(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target: Target,
    token_type_ids: torch.Tensor | None = None,
    steps: int = 50,
    baseline: str = "pad",
    pad_id: int = 0,
    keep: torch.Tensor | None = None,
    batch_size: int = 16,
) -> tuple[torch.Tensor, float]:
    """Attributions (T,) of one sequence (input_ids (1, T)) to the target's logit, and the convergence delta.

    IG (Sundararajan et al., 2017) integrates the gradient along the straight path from a baseline x' to the input x
    in word-embedding space: a_t = sum_d (x - x')_td * integral_0^1 dF/dx_td(x' + a(x - x')) da. Attributions add
    up to F(x) - F(x') (completeness); delta = sum(a) - (F(x) - F(x')) measures the quadrature error. The integral
    is a Gauss-Legendre sum over `steps` points, run in batches of batch_size points per forward.

    The baseline replaces each token's word embedding by [PAD]'s (baseline="pad", pad_id) or by zeros ("zero");
    positions in `keep` (1, T) (e.g. [CLS], [SEP]) keep their own embedding, so their attribution is exactly 0.
    Positions and segments are never interpolated: IG explains the words, not where they stand.
    """
    if model.training:
        raise ValueError("integrated gradients needs the model in eval mode (dropout off): call model.eval()")
    if input_ids.size(0) != 1:
        raise ValueError(f"integrated gradients explains one sequence at a time, not a batch of {input_ids.size(0)}")
    if baseline not in ("pad", "zero"):
        raise ValueError(f"baseline must be 'pad' or 'zero', not {baseline!r}")
    emb = word_embedding(model.backbone)
    with torch.no_grad():
        x = emb(input_ids)  # (1, T, E)
        x0 = emb(torch.full_like(input_ids, pad_id)) if baseline == "pad" else torch.zeros_like(x)
        if keep is not None:
            x0 = torch.where(keep[..., None].bool(), x, x0)
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]; mapped to [0, 1] below
    alphas = torch.tensor((nodes + 1) / 2, dtype=x.dtype, device=x.device)
    weights = torch.tensor(weights / 2, dtype=x.dtype, device=x.device)

    def forward(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores (k,) at the k points x' + alpha (x - x'), and those points (k, T, E) as gradient leaves."""
        point = (x0 + alpha[:, None, None] * (x - x0)).requires_grad_()
        k = alpha.numel()
        types = None if token_type_ids is None else token_type_ids.expand(k, -1)
        with _output_replaced(emb, point):
            logits = model(input_ids.expand(k, -1), attention_mask.expand(k, -1), token_type_ids=types)
        return _score(logits, target), point

    with torch.enable_grad():
        grad = torch.zeros_like(x[0])  # (T, E): the weighted average of the gradients along the path
        for alpha, weight in zip(alphas.split(batch_size), weights.split(batch_size), strict=True):
            score, point = forward(alpha)
            (g,) = torch.autograd.grad(score.sum(), point)
            grad += (weight[:, None, None] * g).sum(0)
        with torch.no_grad():
            f0, f1 = forward(torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device))[0].tolist()
    attributions = ((x - x0)[0] * grad).sum(-1).detach()  # (T,)
    return attributions, attributions.sum().item() - (f1 - f0)


def attention_maps(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Per layer, the attention weights (n_head, T, T) of one sequence (input_ids (1, T)); rows are queries.

    Works on a classifier (its backbone) or a bare backbone of any family. Asking for weights runs the explicit
    softmax formula instead of the fused kernel, which is fine for one sequence.
    """
    backbone = getattr(model, "backbone", model)
    with torch.no_grad():
        _, weights = backbone.hidden(input_ids, attention_mask, token_type_ids, need_weights=True)
    return [w[0] for w in weights]


@dataclass
class Encoded:
    """One text (or text pair) as the classifier reads it, and the tokens as a reader sees them."""

    input_ids: torch.Tensor  # (1, T)
    token_type_ids: torch.Tensor | None  # (1, T) for an encoder, None for GPT
    keep: torch.Tensor  # (1, T) bool: special tokens, which the baseline keeps
    tokens: list[str]


def encode(tokenizer: Tokenizer, backbone: nn.Module, text: str, text_pair: str | None = None) -> Encoded:
    """The text as fine-tuning encoded it: [CLS] text [SEP] (pair [SEP]) for an encoder, text (<eos> pair) for GPT.

    Nothing is cut: a text longer than the model reads is refused, since explaining half of it would mislead."""
    if not text.strip():
        raise LmforgeError("the text is empty: give the text to explain with --text")
    (feature,) = encode_classification([Example(0, text, text_pair)], tokenizer, backbone.family, UNLIMITED, None)
    ids, types = feature["input_ids"], feature["token_type_ids"]
    if len(ids) > backbone.cfg.max_seq_len:
        raise LmforgeError(f"the text is {len(ids)} tokens, but the model reads at most {backbone.cfg.max_seq_len}")
    special = set(tokenizer.special_ids)
    return Encoded(
        input_ids=torch.tensor([ids]),
        token_type_ids=None if types is None else torch.tensor([types]),
        keep=torch.tensor([[i in special for i in ids]]),
        tokens=[tokenizer.decode([i]) for i in ids],
    )


def _label_index(target: int | str | None, labels: Sequence[str], predicted: int) -> int:
    if target is None:
        return predicted
    if isinstance(target, str) and target in labels:
        return labels.index(target)
    if isinstance(target, int) or target.isdigit():
        if 0 <= int(target) < len(labels):
            return int(target)
    raise LmforgeError(f"target {target!r} is not a label of this model; its labels are {', '.join(labels)}")


def baseline_of(tokenizer: Tokenizer) -> str:
    """Integrated gradients' starting point: every token [PAD], or zero embeddings (GPT's tokenizers have no [PAD])."""
    return "zero" if tokenizer.pad_id is None else "pad"


def check_explainable(model: nn.Module) -> None:
    """Integrated gradients follow the gradient through every layer; a quantized layer rounds its input, which has
    none."""
    if is_quantized(model):
        raise LmforgeError(
            "this model's linear layers are quantized (int8 or bf16): integrated gradients need the fp32 model it "
            "was quantized from; explain that one"
        )


def attribute(
    model: nn.Module,
    tokenizer: Tokenizer,
    text: str,
    target: int | str | None = None,
    text_pair: str | None = None,
    steps: int = 50,
    labels: Sequence[str] | None = None,
    position: int | None = None,
) -> tuple[Explanation, list[torch.Tensor]]:
    """The classifier's decision on one text, explained: integrated-gradients attributions to the target's logit
    (a name or index; default: the predicted label) and the attention maps, written nowhere (explain writes them; the
    server returns them). For a token task, position is the token whose label is explained (default: the first
    non-special token)."""
    if not 1 <= steps <= MAX_STEPS:
        raise LmforgeError(f"--steps {steps} is out of range: give 1 to {MAX_STEPS} (50 is usually enough)")
    check_explainable(model)
    model.eval()
    device = next(model.parameters()).device
    enc = encode(tokenizer, model.backbone, text, text_pair)
    ids, keep = enc.input_ids.to(device), enc.keep.to(device)
    types = None if enc.token_type_ids is None else enc.token_type_ids.to(device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(ids, mask, token_type_ids=types)[0].float()  # (n_labels,) or (T, n_labels)
    if logits.dim() == 2:
        if position is None:
            position = next((i for i, special in enumerate(enc.keep[0].tolist()) if not special), 0)
        if not 0 <= position < ids.size(1):
            raise LmforgeError(f"position {position} is outside the text's {ids.size(1)} tokens")
        logits = logits[position]
    elif position is not None:
        raise LmforgeError("--position picks a token of a token-classification model; this one labels whole texts")
    labels = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(logits.numel())]
    probabilities = logits.softmax(-1)
    predicted = int(probabilities.argmax())
    label = _label_index(target, labels, predicted)
    baseline = baseline_of(tokenizer)
    attributions, delta = integrated_gradients(
        model, ids, mask, label if position is None else (position, label), types, steps, baseline,
        pad_id=tokenizer.pad_id or 0, keep=keep,
    )  # fmt: skip
    e = Explanation(
        enc.tokens, attributions.tolist(), delta, dict(zip(labels, probabilities.tolist(), strict=True)),
        labels[predicted], labels[label], position,
    )  # fmt: skip
    return e, attention_maps(model, ids, mask, types)


def explain(
    model: nn.Module,
    tokenizer: Tokenizer,
    text: str,
    out_dir: str | Path,
    target: int | str | None = None,
    text_pair: str | None = None,
    steps: int = 50,
    labels: Sequence[str] | None = None,
    position: int | None = None,
) -> Explanation:
    """Explains the classifier's decision on one text (attribute) into out_dir: explain.html, attributions.png,
    attention-L*.png."""
    e, maps = attribute(model, tokenizer, text, target, text_pair, steps, labels, position)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    e.pngs = write_pngs(e, maps, out)
    e.html = write_html(e, maps, baseline_of(tokenizer), steps, out / "explain.html")
    return e


def write_pngs(e: Explanation, maps: list[torch.Tensor], out: Path) -> list[Path]:
    """attributions.png, then attention-L{layer}.png for each layer (a grid of its heads)."""
    title = f"attribution to the logit of {e.target}{e.where}"
    pngs = [plot_attributions(e.attributions, e.tokens, title, out / "attributions.png")]
    for layer, weights in enumerate(maps):
        pngs.append(plot_attention(weights, e.tokens, f"layer {layer}", out / f"attention-L{layer}.png"))
    return pngs


def explain_checkpoint(
    path: str | Path,
    text: str,
    out_dir: str | Path,
    target: str | None = None,
    text_pair: str | None = None,
    steps: int = 50,
    position: int | None = None,
    device: str | torch.device = "cpu",
) -> Explanation:
    """lmforge explain: loads a fine-tuned classifier and explains its decision on one text."""
    check_output_dir(out_dir, {"the checkpoint": path})
    model, tokenizer, task = load_finetuned(path, device)
    return explain(model, tokenizer, text, out_dir, target, text_pair, steps, task.labels, position)
