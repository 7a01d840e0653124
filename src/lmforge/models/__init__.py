"""Model families built from lmforge.nn blocks."""

from lmforge.models.gpt import GPT

__all__ = ["GPT"]
