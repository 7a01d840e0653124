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
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "int8"],
        help="run the linear layers in this precision, quantized on the fly (default: as the model is stored)",
    )
