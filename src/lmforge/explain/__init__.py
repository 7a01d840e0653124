"""Why a classifier decided: integrated-gradients attributions, attention maps, PNGs and an HTML page."""

from lmforge.explain.attributions import (
    Explanation,
    attention_maps,
    explain,
    explain_checkpoint,
    integrated_gradients,
)

__all__ = ["Explanation", "attention_maps", "explain", "explain_checkpoint", "integrated_gradients"]
