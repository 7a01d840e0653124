"""Checkpoints and loading: atomic checkpoint files, the one loader behind every verb, Hugging Face conversion."""

from lmforge.checkpoint.files import (
    Checkpoint,
    build_head,
    find_latest,
    load_checkpoint,
    load_finetuned,
    load_model,
    save_checkpoint,
    unique_state_dict,
    write_text_atomic,
)
from lmforge.checkpoint.hub import convert_from_hf, convert_to_hf, from_pretrained, resolve

__all__ = [
    "Checkpoint",
    "build_head",
    "convert_from_hf",
    "convert_to_hf",
    "find_latest",
    "from_pretrained",
    "load_checkpoint",
    "load_finetuned",
    "load_model",
    "resolve",
    "save_checkpoint",
    "unique_state_dict",
    "write_text_atomic",
]
