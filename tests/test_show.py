"""lmforge show: the tutorial's worked attention example is softmax(QK^T / sqrt(d)) to the digit, its rows are
distributions, and the positional-encoding plot is a PNG; a user mistake is one line and exit code 2."""

import math

import pytest
import torch

from lmforge.cli.main import main
from lmforge.errors import LmforgeError
from lmforge.explain.anatomy import format_attention, position_similarity, tiny_attention


def _printed_attention(out: str) -> list[list[float]]:
    """The rows of every printed attention table (after its header line and the tokens line)."""
    lines, rows = out.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("attention = softmax"):
            for row in lines[i + 2 :]:
                if not row.strip():
                    break
                rows.append([float(x) for x in row.split()[1:]])
    return rows


def test_printed_rows_sum_to_one(capsys):
    assert main(["show", "attention", "--text", "the cat sat down", "--heads", "2", "--digits", "4"]) == 0
    rows = _printed_attention(capsys.readouterr().out)
    assert len(rows) == 8  # 2 heads x 4 queries
    assert all(len(r) == 4 and abs(sum(r) - 1) < 1e-3 for r in rows)


@pytest.mark.parametrize("causal", [False, True])
def test_tiny_example_is_the_textbook_formula(causal):
    a = tiny_attention("the cat sat on the mat", d_model=8, n_head=2, seed=3, causal=causal)
    scores = torch.einsum("htd,hsd->hts", a.q, a.k) / math.sqrt(4)
    if causal:
        scores = scores.masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
    expected = torch.exp(scores - scores.amax(-1, keepdim=True))
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(a.weights, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.output, expected @ a.v, rtol=0, atol=1e-6)
    assert torch.equal(a.x[0], a.x[4])  # "the" twice: one embedding


def test_seeded_and_printed_readably():
    text = format_attention(tiny_attention(seed=0))
    assert text == format_attention(tiny_attention(seed=0)) != format_attention(tiny_attention(seed=1))
    for heading in ("Q = X W_Q", "K = X W_K", "V = X W_V", "scores = Q K^T / sqrt(4)", "mask: none"):
        assert heading in text
    assert "-inf" in format_attention(tiny_attention(causal=True))


def test_rotary_similarity_depends_on_distance_only():
    """RoPE's promise: the score of a vector with itself moved by p is the same wherever it starts."""
    sim = position_similarity("rotary", 32, 16)
    assert sim[0] == pytest.approx(16.0) and sim.argmax() == 0


@pytest.mark.parametrize("kind", ["sinusoidal", "rotary"])
def test_positions_plot_is_a_png(tmp_path, kind, capsys):
    out = tmp_path / f"{kind}.png"
    assert main(["show", "positions", "--kind", kind, "--length", "16", "--dim", "8", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["positions", "--kind", "learned"], "unknown --kind 'learned'"),
        (["positions", "--dim", "7"], "positive even number"),
        (["attention", "--d-model", "6", "--heads", "4"], "multiple of --heads"),
        (["attention", "--text", " ".join(["word"] * 17)], "at most 16"),
        (["attention", "--model", "no/such/dir"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["show", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_checkpoint_layer_and_head(tmp_path, capsys):
    from helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "gpt", "gpt")
    assert (
        main(["show", "attention", "--model", str(ckpt), "--text", "a great movie", "--head", "1", "--digits", "4"])
        == 0
    )
    out = capsys.readouterr().out
    assert "== head 1 ==" in out and "mask: causal" in out
    rows = _printed_attention(out)
    assert rows and all(abs(sum(r) - 1) < 1e-3 for r in rows)
    with pytest.raises(LmforgeError, match="--layer 9 is out of range"):
        from lmforge.explain.anatomy import checkpoint_attention

        checkpoint_attention(ckpt, "a great movie", layer=9)
