"""The lmforge clean verb (privacy-aware corpus cleaning)."""

from __future__ import annotations

import argparse


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py; the verb is added here."""
