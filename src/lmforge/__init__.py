"""lmforge: build, pretrain, fine-tune, explain, serve and ship Transformer language models."""

from lmforge.errors import LmforgeError

__version__ = "0.1.0"
__all__ = ["LmforgeError", "__version__"]
