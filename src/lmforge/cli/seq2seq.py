"""Verbs of encoder-decoder models: translate and summarize, text in and text out, one output line per input line."""

from __future__ import annotations

import argparse

from lmforge.cli.flags import add_device_flag, add_dtype_flag
from lmforge.errors import LmforgeError


def cmd_seq2seq(args: argparse.Namespace) -> None:
    from lmforge.atomic import check_output_file
    from lmforge.checkpoint.loader import load
    from lmforge.generation.seq2seq import (
        check_options,
        check_seq2seq,
        check_texts,
        generate_seq2seq,
        generate_seq2seq_file,
    )
    from lmforge.training.device import resolve_device

    if (args.input is None) == (not args.text) or (args.input is None) != (args.output is None):
        raise LmforgeError(f"give --text TEXT (repeatable), or --input FILE with --output FILE, to lmforge {args.verb}")
    if args.text:
        check_texts(args.text, "--text")
    device = resolve_device(args.device)
    options = dict(
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size, early_stopping=args.early_stopping,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
    )  # fmt: skip
    check_options(**options)  # a mistake fails before the model loads
    if args.output is not None:
        check_output_file(args.output, {"--input": args.input, "the checkpoint": args.checkpoint})
    loaded = load(args.checkpoint, device, dtype=args.dtype, compile=args.compile)
    model = check_seq2seq(loaded, f"lmforge {args.verb}")
    options |= dict(device=device, progress=not args.no_progress)
    if args.input is not None:
        n = generate_seq2seq_file(model, loaded.tokenizer, args.input, args.output, **options)
        print(f"wrote {n} lines to {args.output}")
    elif len(args.text) == 1 and args.num_beams == 1:
        generate_seq2seq(model, loaded.tokenizer, args.text, **options, on_text=_print_piece)
        print()
    else:
        for text in generate_seq2seq(model, loaded.tokenizer, args.text, **options):
            print(text)


def _print_piece(piece: str) -> None:
    print(piece, end="", flush=True)


def add_seq2seq_verb(verbs: argparse._SubParsersAction, verb: str, help: str, no_repeat_ngram_size: int) -> None:
    p = verbs.add_parser(verb, help=help)
    p.add_argument("checkpoint", help="an encoder-decoder checkpoint (t5 family) or a Hugging Face T5 directory")
    p.add_argument("--text", action="append", default=[], help="a source text (repeatable); one output line each")
    p.add_argument("--input", metavar="FILE", help="a UTF-8 file, one source a line (a blank line gives a blank one)")
    p.add_argument("--output", metavar="FILE", help="where line i of the output answers line i of --input")
    p.add_argument("--num-beams", type=int, default=4, help="beam search with N beams; 1 = greedy or sampling")
    p.add_argument("--max-new-tokens", type=int, help="the longest output (default: what the model's context holds)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length**this")
    p.add_argument(
        "--no-repeat-ngram-size", type=int, default=no_repeat_ngram_size, help="never repeat an n-gram of N (0 = off)"
    )
    p.add_argument("--early-stopping", action="store_true", help="beam search: stop once N hypotheses have ended")
    p.add_argument("--temperature", type=float, default=0.0, help="with --num-beams 1: > 0 samples (0 = greedy)")
    p.add_argument("--top-k", type=int, help="sampling: keep the K likeliest tokens")
    p.add_argument("--top-p", type=float, help="sampling: keep the likeliest tokens up to this probability")
    p.add_argument("--seed", type=int, help="sampling: makes the output reproducible")
    p.add_argument("--batch-size", type=int, default=32, help="sources decoded together")
    add_device_flag(p, "auto")
    add_dtype_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_seq2seq)


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    add_seq2seq_verb(verbs, "translate", "translate text with an encoder-decoder checkpoint", 0)
    add_seq2seq_verb(verbs, "summarize", "summarize text with an encoder-decoder checkpoint", 3)
