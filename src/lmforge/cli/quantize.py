"""The lmforge quantize verb: a model in int8 or bf16, written as a checkpoint, and what it costs in quality."""

from __future__ import annotations

import argparse

from lmforge.cli.models import add_pickle_flag


def cmd_quantize(args: argparse.Namespace) -> None:
    from lmforge.recipes.quantize import REPORT, quantize

    result = quantize(
        args.model, args.out, args.dtype, keep_fp32=args.keep_fp32, embeddings=args.embeddings,
        report_data=args.report, allow_pickle=args.allow_pickle, calibrate=args.calibrate, alpha=args.alpha,
        smooth=not args.no_calibrate,
    )  # fmt: skip
    print(f"wrote {result.checkpoint} ({result.summary})")
    if result.report is not None:
        for name, value in result.report.items():
            if name not in ("model", "data", "quantization"):
                print(f"  {name}: {_shown(value)}")
        print(f"wrote {result.checkpoint.parent / REPORT}")


def _shown(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_shown(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py."""
    p = verbs.add_parser("quantize", help="a model's linear layers in int8 or bf16, as a checkpoint for inference")
    p.add_argument("model", help="an lmforge checkpoint, a Hugging Face directory, or all-MiniLM-L6-v2")
    p.add_argument("--out", required=True, help="directory for the quantized checkpoint (new, or empty)")
    p.add_argument("--dtype", required=True, choices=["int8", "bf16"], help="int8 (W8A8 dynamic) or bf16 weights")
    p.add_argument(
        "--keep-fp32", action="append", default=[], metavar="NAME",
        help="a layer to leave in fp32, by module name or glob, e.g. lm_head or 'decoder.blocks.0.*' (repeatable)",
    )  # fmt: skip
    p.add_argument("--embeddings", action="store_true", help="quantize embedding tables too (those no LM head shares)")
    p.add_argument(
        "--report", metavar="DATA",
        help="score fp32 and the quantized model on DATA: labelled data for a fine-tuned model, a text file for a "
        "language model (loss, perplexity) or an encoder (embedding cosine per line)",
    )  # fmt: skip
    p.add_argument(
        "--calibrate", metavar="TEXTS",
        help="int8: a text file (one text per line, a few hundred of the model's kind of input) whose activations "
        "smooth the layers (SmoothQuant): closer to fp32 where a few channels carry large values. Default: "
        "lmforge's 64 built-in texts",
    )  # fmt: skip
    p.add_argument(
        "--no-calibrate", action="store_true",
        help="int8: no smoothing (each token's row rounded as it is); not with --calibrate",
    )  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.5, help="smoothing's exponent: how much range moves to the weights")
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_quantize)
