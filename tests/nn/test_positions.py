"""Sinusoidal table and rotary embeddings against their defining formulas."""

import math

import pytest
import torch

from lmforge.nn import (
    LearnedPositions,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalPositions,
    relative_position_bucket,
    sinusoidal_table,
)


@pytest.mark.parametrize("d_model", [16, 7])
def test_sinusoidal_table_matches_the_paper(d_model):
    table = sinusoidal_table(50, d_model)
    assert table.shape == (50, d_model)
    for pos in (0, 1, 7, 49):
        for col in range(d_model):
            i = col // 2
            angle = pos / 10000 ** (2 * i / d_model)
            expected = math.sin(angle) if col % 2 == 0 else math.cos(angle)
            assert table[pos, col].item() == pytest.approx(expected, abs=1e-6), (pos, col)


def test_sinusoidal_module_looks_up_the_table():
    module = SinusoidalPositions(20, 6)
    positions = torch.tensor([3, 0, 19])
    assert torch.equal(module(positions), sinusoidal_table(20, 6)[positions])
    assert list(module.parameters()) == []


def test_learned_positions_are_one_parameter_row_per_position():
    module = LearnedPositions(10, 4)
    torch.nn.init.normal_(module.weight)
    assert torch.equal(module(torch.tensor([2, 5])), module.weight[[2, 5]])


def rotate_by_hand(x, pos, base=10000.0):
    """Each pair (x[i], x[i + d/2]) is the complex number x[i] + j x[i + d/2], multiplied by e^(j pos theta_i)."""
    d = x.numel()
    out = [0.0] * d
    for i in range(d // 2):
        theta = pos * base ** (-2 * i / d)
        a, b = float(x[i]), float(x[i + d // 2])
        out[i] = a * math.cos(theta) - b * math.sin(theta)
        out[i + d // 2] = a * math.sin(theta) + b * math.cos(theta)
    return torch.tensor(out)


def test_rotary_matches_the_complex_rotation():
    rope = RotaryEmbedding(8, 32)
    x = torch.randn(1, 1, 32, 8, generator=torch.Generator().manual_seed(0))
    y = rope(x)
    for pos in (0, 1, 5, 31):
        torch.testing.assert_close(y[0, 0, pos], rotate_by_hand(x[0, 0, pos], pos), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])  # position 0 is not rotated


def test_rotary_preserves_norms():
    rope = RotaryEmbedding(16, 64)
    x = torch.randn(2, 3, 64, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rope(x[..., :54, :], start=10).norm(dim=-1), x[..., :54, :].norm(dim=-1))


def test_rotary_scores_depend_only_on_relative_offset():
    rope = RotaryEmbedding(8, 128)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)

    def score(m, n):
        # rotate q at position m and k at position n (a length-1 sequence starting there)
        return (rope(q.view(1, 1, 1, 8), m) * rope(k.view(1, 1, 1, 8), n)).sum().item()

    for m, n in ((3, 1), (0, 5), (7, 7)):
        for c in (1, 10, 50):
            assert score(m + c, n + c) == pytest.approx(score(m, n), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)  # but it does depend on the offset


def test_rotary_start_offset_equals_slicing_a_longer_sequence():
    rope = RotaryEmbedding(8, 32)
    x = torch.randn(2, 2, 20, 8, generator=torch.Generator().manual_seed(0))
    full = rope(x)
    torch.testing.assert_close(rope(x[:, :, 12:], start=12), full[:, :, 12:])
    torch.testing.assert_close(rope(x[:, :, 7:8], start=7), full[:, :, 7:8])


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_equal_t5s(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :] - torch.arange(0, 40)[:, None]
    ours = relative_position_bucket(relative, bidirectional, 32, 128)
    assert torch.equal(ours, T5Attention._relative_position_bucket(relative, bidirectional, 32, 128))


def test_relative_bias_after_a_cache_is_the_last_rows_of_the_full_bias():
    torch.manual_seed(0)
    bias = RelativePositionBias(n_head=3, num_buckets=8, max_distance=16, bidirectional=False)
    full = bias(7, 7)
    assert full.shape == (1, 3, 7, 7)
    assert torch.equal(bias(2, 7, start=5), full[:, :, 5:])
    assert torch.equal(full[0, :, 4, 4], bias.embed.weight[0])  # offset 0 is bucket 0
