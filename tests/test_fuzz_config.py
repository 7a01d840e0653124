"""Hostile configs: every field given a wrong type or an out-of-range value is one LmforgeError naming the field;
arbitrary documents and --set overrides are a config or an LmforgeError, never another exception."""

import dataclasses
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmforge.cli.main import main
from lmforge.config import FAMILIES, DataConfig, RunConfig, TrainConfig, apply_override, load_config, sections_of
from lmforge.errors import LmforgeError
from lmforge.tokenizer import MAX_VOCAB_SIZE, min_vocab_size

FIELDS = [(s, f.name) for s, kind in (("model", FAMILIES["gpt"]), ("data", DataConfig), ("train", TrainConfig))
          for f in dataclasses.fields(kind)]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20), st.dates()
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
)
FUZZ = settings(max_examples=150, deadline=None)


def build(raw):
    """The config, or None when an LmforgeError (the only exception allowed) says what is wrong."""
    try:
        return RunConfig.from_dict(raw)
    except LmforgeError as e:
        return e


@FUZZ
@given(st.sampled_from(FIELDS), VALUES)
def test_any_value_of_any_field_builds_or_names_the_field(field, value):
    section, name = field
    result = build({section: {name: value}})
    if isinstance(result, LmforgeError):
        assert f"{section}.{name}" in str(result), str(result)
    else:  # accepted: the value as given, a number read from text, or a default for None
        got = getattr(getattr(result, section), name)
        assert got == value or (isinstance(got, float) and math.isfinite(got)) or value is None


@pytest.mark.parametrize("section, name", FIELDS)
def test_wrong_type_names_the_field(section, name):
    for wrong in ([1, 2], {"a": 1}, object()):
        with pytest.raises(LmforgeError, match=rf"{section}\.{name}"):
            RunConfig.from_dict({section: {name: wrong}})


@pytest.mark.parametrize(
    "field, value",
    [("train.lr", float("nan")), ("train.lr", float("inf")), ("train.seed", -1), ("train.seed", 2**32),
     ("model.dropout", 1.0), ("train.batch_size", 0), ("train.out", ""), ("train.max_nonfinite", 0),
     ("model.d_ff", -4), ("train.seq_len", 0), ("data.val_fraction", -0.1), ("data.on_bad_line", "ignore"),
     ("train.parallel", "zero3"), ("train.grad_clip", float("-inf"))],
)  # fmt: skip
def test_out_of_range_names_the_field(field, value):
    section, name = field.split(".")
    with pytest.raises(LmforgeError, match=rf"{section}\.{name}"):
        RunConfig.from_dict({section: {name: value}})


@FUZZ
@given(
    st.sampled_from(["gpt", "bert"]),
    st.sampled_from(["char", "bpe", "wordpiece", "tok.json"]),
    st.integers(-(2**70), 2**70) | st.integers(0, 300),
)
def test_vocab_size_builds_within_the_tokenizers_range_or_names_it(family, tokenizer, size):
    """A BPE or WordPiece trained on the data needs its base alphabet and a size the trainer survives; char and a
    tokenizer.json ignore vocab_size."""
    assume(not (family == "bert" and tokenizer == "char"))  # refused for its own reason: no [CLS] or [MASK]
    result = build({"family": family, "data": {"tokenizer": tokenizer, "vocab_size": size}})
    trained = tokenizer in ("bpe", "wordpiece")
    fits = not trained or min_vocab_size(tokenizer, family == "bert") <= size <= MAX_VOCAB_SIZE
    assert isinstance(result, RunConfig) == fits
    if not fits:
        assert "data.vocab_size" in str(result) and f"data.tokenizer = {tokenizer}" in str(result)


@FUZZ
@given(st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), VALUES, max_size=4) | VALUES)
def test_any_document_is_a_config_or_an_lmforge_error(raw):
    result = build(raw)
    assert isinstance(result, (RunConfig, LmforgeError))


@FUZZ
@given(st.text(max_size=40))
def test_any_override_is_applied_or_an_lmforge_error(assignment):
    raw = {}
    try:
        apply_override(raw, assignment, sections_of(raw))
        cfg = RunConfig.from_dict(raw)
    except LmforgeError as e:
        assert str(e), "an error says what is wrong"
        return
    ((section, values),) = raw.items()  # applied: one field of one section was set, and the config took it
    ((name, _),) = values.items()
    assert section in ("model", "data", "train") and hasattr(getattr(cfg, section), name)


@pytest.mark.parametrize("text", ["2001-13-45", "[" * 600, "&a [*a]", "!!python/object:os.system"])
def test_yaml_that_breaks_the_parser_is_a_clear_error(tmp_path, text):
    with pytest.raises(LmforgeError, match="train.lr"):
        load_config("char-small", [f"train.lr={text}"])
    (tmp_path / "c.yaml").write_text(f"train:\n  lr: {text}\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="not valid YAML|train.lr"):
        load_config(str(tmp_path / "c.yaml"))


def test_errors_print_as_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text('model:\n  "n_layer\\nx": 2\n', encoding="utf-8")
    with pytest.raises(LmforgeError):
        load_config(str(path))
    assert main(["train", "--config", str(path), "--data", "x"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
