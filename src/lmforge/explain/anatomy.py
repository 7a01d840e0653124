"""The anatomy of attention and of positional encodings, printed and plotted for the tutorial.

Everything here calls the package's own `nn.attention` and `nn.positions`, so what a reader sees is what the models
compute, not a second copy of the math written for teaching."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.nn.attention import MultiHeadAttention, attention_mask, scaled_dot_product_attention
from lmforge.nn.positions import RotaryEmbedding, sinusoidal_table

MAX_TOKENS = 16  # a wider table no longer fits a terminal, and a reader cannot follow it anyway
POSITION_KINDS = ("sinusoidal", "rotary")


@dataclass
class AttentionAnatomy:
    """One attention computation, step by step; rows are queries and columns keys."""

    tokens: list[str]
    weights: torch.Tensor  # (n_head, T, T), softmax rows
    mask: torch.Tensor | None  # (T, T) bool, True = may attend; None when nothing is masked
    title: str
    x: torch.Tensor | None = None  # (T, d_model) the inputs, tiny example only
    q: torch.Tensor | None = None  # (n_head, T, d_head)
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    scores: torch.Tensor | None = None  # (n_head, T, T) scaled, before the mask
    output: torch.Tensor | None = None  # (n_head, T, d_head) = weights @ v


def tiny_attention(
    text: str = "the cat sat down", d_model: int = 4, n_head: int = 1, seed: int = 0, causal: bool = False
) -> AttentionAnatomy:
    """A seeded single attention layer over whitespace tokens: small enough to check every number by hand.

    The inputs are random vectors (one per distinct word, so a repeated word repeats its vector) and the
    projections are a freshly initialised `MultiHeadAttention`, the module every lmforge model uses."""
    tokens = text.split()
    if not tokens:
        raise LmforgeError("the text is empty: give a few words with --text")
    if len(tokens) > MAX_TOKENS:
        raise LmforgeError(f"the text is {len(tokens)} tokens; the worked example shows at most {MAX_TOKENS}")
    if d_model < 1 or n_head < 1 or d_model % n_head:
        raise LmforgeError(f"--d-model ({d_model}) must be a positive multiple of --heads ({n_head})")
    vocab = {word: i for i, word in enumerate(dict.fromkeys(tokens))}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        table = torch.randn(len(vocab), d_model)
        mha = MultiHeadAttention(d_model, n_head, bias=False)
    x = table[[vocab[w] for w in tokens]]  # (T, d_model)
    with torch.no_grad():
        q, k, v = (mha._heads(z) for z in mha.qkv(x[None]).chunk(3, dim=-1))  # (1, n_head, T, d_head)
        mask = attention_mask(len(tokens), len(tokens), causal, None, x.device)
        output, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=True)
    scores = q @ k.transpose(-2, -1) / math.sqrt(mha.d_head)  # shown before masking; the weights come from the module
    title = (
        f"d_model {d_model}, {n_head} head{'s' if n_head > 1 else ''} of d_head {mha.d_head}, seed {seed}, "
        f"{'causal mask' if causal else 'no mask'}"
    )
    return AttentionAnatomy(
        tokens, weights[0], None if mask is None else mask[0, 0], title, x, q[0], k[0], v[0], scores[0], output[0]
    )


def checkpoint_attention(path: str | Path, text: str, layer: int = 0) -> AttentionAnatomy:
    """The attention weights of one layer of a trained model (any family) on a text, as its tokenizer splits it."""
    from lmforge.checkpoint.loader import load
    from lmforge.explain.attributions import attention_maps

    loaded = load(path)
    ids = loaded.tokenizer.encode(text)
    if not ids:
        raise LmforgeError("the text is empty: give a few words with --text")
    if len(ids) > MAX_TOKENS:
        raise LmforgeError(f"the text is {len(ids)} tokens; the attention table shows at most {MAX_TOKENS}")
    maps = attention_maps(loaded.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    if not 0 <= layer < len(maps):
        raise LmforgeError(f"--layer {layer} is out of range: the model has layers 0 to {len(maps) - 1}")
    causal = loaded.config.family == "gpt"
    mask = attention_mask(len(ids), len(ids), True, None, torch.device("cpu"))[0, 0] if causal else None
    family = loaded.config.family
    return AttentionAnatomy(
        [loaded.tokenizer.decode([i]) for i in ids], maps[layer].float(), mask, f"{family}, layer {layer}"
    )


def _table(rows: torch.Tensor, row_names: list[str], col_names: list[str], digits: int, mask=None) -> list[str]:
    """A right-aligned text table; masked cells print as -inf, as the scores are before the softmax."""
    cells = [
        [("-inf" if mask is not None and not mask[i, j] else f"{value:.{digits}f}") for j, value in enumerate(row)]
        for i, row in enumerate(rows.tolist())
    ]
    width = max(len(s) for s in [*col_names, *(c for row in cells for c in row)]) + 1
    first = max(len(s) for s in row_names) + 1
    lines = [" " * first + "".join(name.rjust(width) for name in col_names)]
    lines += [
        name.ljust(first) + "".join(c.rjust(width) for c in row) for name, row in zip(row_names, cells, strict=True)
    ]
    return lines


def format_attention(a: AttentionAnatomy, head: int | None = None, digits: int = 2) -> str:
    """The computation as a reader would write it on paper: inputs, Q K V, scaled scores, mask, softmax, output."""
    n_head = a.weights.size(0)
    if head is not None and not 0 <= head < n_head:
        raise LmforgeError(f"--head {head} is out of range: the layer has heads 0 to {n_head - 1}")
    names = [t.replace(" ", "␣").replace("\n", "\\n") or "''" for t in a.tokens]  # a space must show
    lines = [f"tokens: {' | '.join(names)}", a.title]
    if a.x is not None:
        dims = [f"d{i}" for i in range(a.x.size(1))]
        lines += ["", "X, the inputs (one row per token)", *_table(a.x, names, dims, digits)]
    if a.mask is None:
        lines += ["", "mask: none (every token sees every token)"]
    else:
        lines += ["", "mask: causal (a token sees itself and the tokens before it)"]
    for h in range(n_head) if head is None else [head]:
        lines += ["", f"== head {h} =="]
        if a.q is not None:
            dims = [f"d{i}" for i in range(a.q.size(-1))]
            for name, t in (("Q = X W_Q", a.q), ("K = X W_K", a.k), ("V = X W_V", a.v)):
                lines += ["", name, *_table(t[h], names, dims, digits)]
            d_head = a.q.size(-1)
            lines += ["", f"scores = Q K^T / sqrt({d_head}) (row: query, column: key)"]
            lines += _table(a.scores[h], names, names, digits, a.mask)
        lines += ["", "attention = softmax(scores), row by row (each row sums to 1)"]
        lines += _table(a.weights[h], names, names, digits)
        if a.output is not None:
            out_dims = [f"d{i}" for i in range(a.output.size(-1))]
            lines += ["", "output = attention V", *_table(a.output[h], names, out_dims, digits)]
    return "\n".join(lines)


def position_table(kind: str, length: int, dim: int) -> torch.Tensor:
    """What a position adds (sinusoidal: the table, length x dim) or turns (rotary: cos then sin of the angles,
    length x dim), straight from the modules the models use."""
    if kind not in POSITION_KINDS:
        raise LmforgeError(f"unknown --kind {kind!r}: choose one of {', '.join(POSITION_KINDS)}")
    if length < 1 or dim < 2 or dim % 2:
        raise LmforgeError(f"--length ({length}) must be positive and --dim ({dim}) a positive even number")
    if kind == "sinusoidal":
        return sinusoidal_table(length, dim)
    rope = RotaryEmbedding(dim, length)
    return torch.cat((rope.cos, rope.sin), dim=-1)


def position_similarity(kind: str, length: int, dim: int) -> torch.Tensor:
    """How alike position 0 and each position p look to attention: PE[0]·PE[p] for sinusoidal encodings, and for
    rotary the score q·k of one vector rotated to 0 and to p. Both fall with distance, which is the point."""
    table = position_table(kind, length, dim)  # checks the arguments
    if kind == "sinusoidal":
        return table @ table[0]
    rope = RotaryEmbedding(dim, length)
    x = torch.ones(1, 1, length, dim)  # (B, n_head, T, d_head): one vector at every position
    turned = rope(x)[0, 0]
    return turned @ turned[0]


def plot_positions(kind: str, length: int, dim: int, out: str | Path) -> Path:
    """A heatmap of the encoding and a curve of similarity against distance, as a PNG."""
    from lmforge.plots import pyplot, save_figure

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise LmforgeError(f"--out {out} must name a .png file")
    if not out.parent.is_dir():
        raise LmforgeError(f"--out {out}: the folder {out.parent} does not exist")
    table, similarity = position_table(kind, length, dim), position_similarity(kind, length, dim)
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4), dpi=100)
    image = left.imshow(table.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    label = "dimension" if kind == "sinusoidal" else "pair (cos | sin of its angle)"
    left.set(title=f"{kind}: {length} positions x {dim}", xlabel=label, ylabel="position")
    fig.colorbar(image, ax=left)
    right.plot(similarity.numpy())
    right.set(title="similarity of position 0 to position p", xlabel="p", ylabel="dot product")
    return save_figure(fig, out)
