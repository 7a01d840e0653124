"""Corpus cleaning, packed token files and pretraining samplers."""

from lmforge.data.clean import clean_text
from lmforge.data.prepare import PreparedData, ensure_prepared, load_prepared, prepare, read_text
from lmforge.data.sampler import BatchSampler, iter_eval_blocks

__all__ = [
    "BatchSampler",
    "PreparedData",
    "clean_text",
    "ensure_prepared",
    "iter_eval_blocks",
    "load_prepared",
    "prepare",
    "read_text",
]
