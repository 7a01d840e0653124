"""lmforge: build, pretrain, fine-tune, explain, serve and ship Transformer language models."""

from lmforge.errors import LmforgeError

__version__ = "0.1.0"
__all__ = ["LmforgeError", "__version__", "embed", "from_pretrained", "load"]


def __getattr__(name: str):
    """load, from_pretrained and embed load on first use, so `import lmforge` stays light (no torch)."""
    if name == "load":
        from lmforge.checkpoint.loader import load

        return load
    if name == "from_pretrained":
        from lmforge.checkpoint.loader import from_pretrained

        return from_pretrained
    if name == "embed":
        from lmforge.inference.embed import embed

        return embed
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
