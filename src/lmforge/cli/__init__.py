"""Command line: argument parsing only; every verb calls a library function."""

from lmforge.cli.main import main

__all__ = ["main"]
