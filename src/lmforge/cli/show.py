"""The lmforge show verbs: the tutorial's worked examples (an attention matrix, a positional-encoding plot)."""

from __future__ import annotations

import argparse


def cmd_attention(args: argparse.Namespace) -> None:
    from lmforge.explain.anatomy import checkpoint_attention, format_attention, tiny_attention

    if args.model is None:
        anatomy = tiny_attention(args.text, args.d_model, args.heads, args.seed, args.causal)
    else:
        anatomy = checkpoint_attention(args.model, args.text, args.layer)
    print(format_attention(anatomy, args.head if args.model is not None else None, args.digits))
    if args.out is not None:
        from lmforge.plots import plot_attention

        print(f"wrote {plot_attention(anatomy.weights, anatomy.tokens, anatomy.title, args.out)}")


def cmd_positions(args: argparse.Namespace) -> None:
    from lmforge.explain.anatomy import plot_positions

    print(f"wrote {plot_positions(args.kind, args.length, args.dim, args.out)}")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py."""
    show = verbs.add_parser("show", help="worked examples: an attention matrix, positional encodings")
    sub = show.add_subparsers(dest="show_verb", required=True)
    p = sub.add_parser("attention", help="Q, K, V, scores and the softmax attention matrix of a short text")
    p.add_argument("--text", default="the cat sat down", help="at most 16 tokens (default: %(default)s)")
    p.add_argument("--d-model", type=int, default=4, help="the worked example's width (default 4)")
    p.add_argument("--heads", type=int, default=1, help="the worked example's heads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the worked example's random inputs and weights")
    p.add_argument("--causal", action="store_true", help="the worked example: mask the future, as a decoder does")
    p.add_argument("--model", metavar="DIR", help="a trained model (checkpoint or Hugging Face dir) instead")
    p.add_argument("--layer", type=int, default=0, help="with --model: the layer (default 0)")
    p.add_argument("--head", type=int, default=0, help="with --model: the head (default 0)")
    p.add_argument("--digits", type=int, default=2, help="decimals printed (default 2)")
    p.add_argument("--out", metavar="FILE.png", help="also draw the attention matrix of every head")
    p.set_defaults(fn=cmd_attention)
    p = sub.add_parser("positions", help="plot sinusoidal or rotary positional encodings")
    p.add_argument("--kind", default="sinusoidal", help="sinusoidal (default) or rotary")
    p.add_argument("--length", type=int, default=64, help="positions (default 64)")
    p.add_argument("--dim", type=int, default=64, help="dimensions, even (default 64)")
    p.add_argument("--out", default="positions.png", metavar="FILE.png", help="the plot (default positions.png)")
    p.set_defaults(fn=cmd_positions)
