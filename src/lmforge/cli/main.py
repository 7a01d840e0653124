"""Command line: argument parsing only; every verb calls a library function. The verbs live in one module per
group (train, models, finetune); this one assembles them and turns a user mistake into one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
import warnings

from lmforge.cli import (
    bias,
    chat,
    cleaning,
    estimate,
    finetune,
    models,
    quantize,
    recommend,
    seq2seq,
    serve,
    show,
    train,
    triples,
)
from lmforge.errors import LmforgeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Build, train and run Transformer language models.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in (
        train, models, finetune, seq2seq, quantize, chat, cleaning, triples, bias, estimate, recommend, show, serve,
    ):  # fmt: skip
        group.add_verbs(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    try:
        if getattr(args, "nproc", None) is not None and args.nproc != 1:
            from lmforge.training.distributed import launch

            batch_size = args.checked_batch_size(args)  # a config or path mistake is one line here, not one per worker
            return launch(args.nproc, sys.argv[1:] if argv is None else argv, batch_size)
        args.fn(args)
    except LmforgeError as e:
        message = str(e).replace("\n", "\\n")  # one line, whatever a value in the message holds
        print(f"lmforge: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    return 0
