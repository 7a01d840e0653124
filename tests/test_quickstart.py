import pytest

from lmforge.errors import LmforgeError
from lmforge.recipes.quickstart import quickstart, stdlib_corpus


def test_stdlib_corpus_is_prose_that_exists_everywhere():
    text = stdlib_corpus(max_bytes=200_000)
    assert len(text) >= 200_000 and text.isascii()
    assert "Return" in text and "\n\n" in text


def test_quickstart_trains_saves_and_samples(tmp_path, corpus, capsys):
    ckpt = quickstart(data=str(corpus), out=str(tmp_path / "qs"), max_steps=3)
    out = capsys.readouterr().out
    assert ckpt.name == "step-000003" and (ckpt / "model.safetensors").is_file()
    assert (tmp_path / "qs" / "model" / "loss.png").is_file()
    assert out.count("--- sample") == 3 and "lmforge generate" in out and "final train loss" in out
    again = quickstart(data=str(corpus), out=str(tmp_path / "qs"), max_steps=3)  # a second run reuses the model
    assert again == ckpt
    out = capsys.readouterr().out
    assert "already trained" in out and "nan" not in out


def test_quickstart_refuses_zero_steps_before_building_its_corpus(tmp_path):
    with pytest.raises(LmforgeError, match="max_steps"):
        quickstart(out=str(tmp_path / "qs"), max_steps=0)
    assert not (tmp_path / "qs").exists()
