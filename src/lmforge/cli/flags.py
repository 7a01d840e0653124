"""Flags that verbs of several groups share."""

from __future__ import annotations

import argparse


def add_device_flag(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=default)


def add_overrides_flag(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def add_dtype_flag(p: argparse.ArgumentParser) -> None:
    """--dtype, and --compile, which pays most on a quantized model."""
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "int8"],
        help="run the linear layers in this precision, quantized on the fly (default: as the model is stored)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the model's layers under torch.compile (lmforge.kernels.compile_layers): the first call of each "
        "input shape compiles (seconds to a minute; Inductor caches it for the next run), later ones run faster, "
        "above all with --dtype int8; pays on long runs (serve, files, long generation)",
    )
