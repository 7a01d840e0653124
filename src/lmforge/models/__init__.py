"""Model families built from lmforge.nn blocks; MODELS maps a config's family to its model class."""

from lmforge.models.bert import Bert
from lmforge.models.gpt import GPT
from lmforge.models.meta import on_meta
from lmforge.models.t5 import T5
from lmforge.models.xlnet import XLNet

MODELS = {"gpt": GPT, "bert": Bert, "t5": T5, "xlnet": XLNet}

__all__ = ["GPT", "MODELS", "T5", "Bert", "XLNet", "on_meta"]
