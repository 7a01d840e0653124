"""Corpus cleaning, packed token files, documents for encoders, and pretraining samplers."""

from lmforge.data.clean import clean_text
from lmforge.data.documents import DocumentData, DocumentSplit, load_documents, prepare_documents, read_documents
from lmforge.data.prepare import ensure_prepared, prepare, read_text
from lmforge.data.prepared_folder import PreparedData, load_prepared
from lmforge.data.pretraining import IGNORE, PretrainingSampler, mask_tokens
from lmforge.data.sampler import BatchSampler, iter_eval_blocks

__all__ = [
    "IGNORE",
    "BatchSampler",
    "DocumentData",
    "DocumentSplit",
    "PreparedData",
    "PretrainingSampler",
    "clean_text",
    "ensure_prepared",
    "iter_eval_blocks",
    "load_documents",
    "load_prepared",
    "mask_tokens",
    "prepare",
    "prepare_documents",
    "read_documents",
    "read_text",
]
