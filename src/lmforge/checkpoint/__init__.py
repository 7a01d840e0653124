"""Checkpoints and loading: atomic checkpoint files, the one loader behind every verb, Hugging Face conversion."""

from lmforge.checkpoint.convert import convert_from_hf, convert_to_hf  # noqa: I001 (after the loader it uses)
from lmforge.checkpoint.files import (
    Checkpoint,
    Loaded,
    find_latest,
    load_checkpoint,
    save_checkpoint,
    unique_state_dict,
    write_text_atomic,
)
from lmforge.checkpoint.hub import resolve
from lmforge.checkpoint.loader import from_pretrained, load, load_finetuned, load_model

__all__ = [
    "Checkpoint",
    "Loaded",
    "convert_from_hf",
    "convert_to_hf",
    "find_latest",
    "from_pretrained",
    "load",
    "load_checkpoint",
    "load_finetuned",
    "load_model",
    "resolve",
    "save_checkpoint",
    "unique_state_dict",
    "write_text_atomic",
]
