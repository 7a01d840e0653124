"""RMSNorm against its formula and torch's own; make_norm picks by name."""

import pytest
import torch
from torch import nn

from lmforge.nn import RMSNorm, make_norm


def test_rms_norm_is_the_formula_and_torchs():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    reference = nn.RMSNorm(16, eps=1e-6)
    reference.weight = norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert torch.allclose(norm(x), reference(x), atol=1e-6)


def test_make_norm_by_name():
    assert isinstance(make_norm("rms", 8, 1e-6), RMSNorm)
    assert make_norm("layer", 8, 1e-5, bias=False).bias is None
    with pytest.raises(ValueError, match="rms"):
        make_norm("batch", 8, 1e-5)
