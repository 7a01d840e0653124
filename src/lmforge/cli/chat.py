"""lmforge chat: a conversation with a GPT in the terminal (or with lines piped in)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from lmforge.cli.flags import add_device_flag, add_dtype_flag


def _typed_lines() -> Iterator[str]:
    while True:
        try:
            yield input("> ")
        except EOFError:
            print()
            return


def _write(text: str) -> None:
    print(text, end="", flush=True)


def cmd_chat(args: argparse.Namespace) -> None:
    from lmforge.generation.dialogue import Dialogue, load_chat_model, run_dialogue
    from lmforge.generation.text import check_sampling
    from lmforge.training.device import resolve_device

    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    check_sampling(args.max_new_tokens, **sampling)  # a mistake fails before the model loads
    model, tokenizer, template = load_chat_model(
        args.checkpoint, resolve_device(args.device), args.dtype, compile=args.compile
    )
    dialogue = Dialogue(model, tokenizer, template, args.system, args.max_new_tokens, **sampling)
    if sys.stdin.isatty():
        print("lmforge chat: /reset starts a new conversation, /exit (or Ctrl-D) ends it", file=sys.stderr)
        run_dialogue(dialogue, _typed_lines(), _write)
    else:  # piped: each user line is echoed, so the output reads as a transcript
        run_dialogue(dialogue, sys.stdin, _write, echo=True)


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("chat", help="chat with a GPT in the terminal, with its chat template (history, streaming)")
    p.add_argument("checkpoint", help="a chat model (OUT of lmforge finetune --task chat), a GPT or a HF model dir")
    p.add_argument("--system", help="a system message that opens the conversation (kept across /reset)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="the longest reply, in tokens")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    add_device_flag(p, "auto")
    add_dtype_flag(p)
    p.set_defaults(fn=cmd_chat)
