"""Model families built from lmforge.nn blocks; MODELS maps a config's family to its model class."""

from lmforge.models.bert import Bert
from lmforge.models.gpt import GPT

MODELS = {"gpt": GPT, "bert": Bert}

__all__ = ["GPT", "MODELS", "Bert"]
