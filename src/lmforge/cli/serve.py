"""The lmforge serve verb: an OpenAI-compatible HTTP server for a checkpoint or a Hugging Face directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.flags import add_device_flag, add_dtype_flag
from lmforge.cli.models import add_pickle_flag
from lmforge.errors import LmforgeError

SHUTDOWN_WAIT_S = 10  # Ctrl-C / SIGTERM: in-flight requests get this long to finish


def cmd_serve(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.loader import load
    from lmforge.training.device import resolve_device

    if not 0 < args.port < 65536:
        raise LmforgeError(f"--port {args.port} is not a TCP port: give 1 to 65535")
    if args.max_batch < 1 or args.max_queue < 0:
        raise LmforgeError("--max-batch must be at least 1 and --max-queue at least 0")
    try:
        from lmforge.serve.app import create_app, run
    except ImportError as e:
        message = f"lmforge serve needs the serve extra ({e.name} is missing): pip install 'lmforge[serve]'"
        raise LmforgeError(message) from None
    loaded = load(args.model, resolve_device(args.device), args.allow_pickle, dtype=args.dtype, compile=args.compile)
    name = args.model_name or Path(args.model.rstrip("/")).name
    app = create_app(loaded, name, args.api_key, args.max_batch, args.max_queue)
    where = "all interfaces" if args.host in ("0.0.0.0", "::") else "this interface only"
    print(f"serving {name} on http://{args.host}:{args.port} ({where}); Ctrl-C stops", flush=True)
    run(app, args.host, args.port, SHUTDOWN_WAIT_S)


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py."""
    p = verbs.add_parser("serve", help="an OpenAI-compatible API (completions, chat, embeddings) for a model")
    p.add_argument("model", help="an lmforge checkpoint, a Hugging Face directory, or all-MiniLM-L6-v2")
    p.add_argument("--host", default="127.0.0.1", help="the interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every /v1/ request")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoding together (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those; then 503 (default 64)")
    p.add_argument("--model-name", help="the name clients give as `model` (default: the directory's name)")
    add_device_flag(p, "auto")
    add_dtype_flag(p)
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_serve)
