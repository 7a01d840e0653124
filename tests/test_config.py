import pytest

from lmforge.config import GPTConfig, RunConfig, TrainConfig, apply_override, load_config, sections_of, shipped_configs
from lmforge.errors import LmforgeError


def test_shipped_configs_load():
    names = shipped_configs()
    assert {"char-small", "gpt-small"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.train.seq_len == cfg.model.max_seq_len
    assert load_config("char-small").data.tokenizer == "char"
    assert load_config("gpt-small").data.tokenizer == "bpe"


def test_overrides_with_section_and_bare_key():
    cfg = load_config("char-small", ["train.lr=3e-4", "n_layer=2"])
    assert cfg.train.lr == 3e-4 and cfg.model.n_layer == 2


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.n_layer=two", "model.n_layer"),
        ("model.dropout=1.5", "model.dropout"),
        ("train.lr=-1", "train.lr"),
        ("model.position=absolute", "model.position"),
        ("train.compile=maybe", "train.compile"),
        ("model.bogus=1", "model.bogus"),
        ("model.n_head=5", "model.n_head"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(LmforgeError, match=field.replace(".", r"\.")):
        load_config("char-small", [override])


def test_bare_key_in_two_sections_is_ambiguous():
    raw = {}
    with pytest.raises(LmforgeError, match="vocab_size"):
        apply_override(raw, "vocab_size=10", sections_of(raw))


def test_yaml_path_and_unknown_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layer: 2\n", encoding="utf-8")
    assert load_config(str(path)).model.n_layer == 2
    path.write_text("modle:\n  n_layer: 2\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="unknown section 'modle'"):
        load_config(str(path))
    path.write_text("model: [1, 2\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="not valid YAML"):
        load_config(str(path))


def test_seq_len_cannot_exceed_context():
    with pytest.raises(LmforgeError, match="seq_len"):
        RunConfig(model=GPTConfig(max_seq_len=16), train=TrainConfig(seq_len=32))


def test_int_accepted_for_float_and_bool_rejected_for_int():
    assert TrainConfig(lr=1).lr == 1.0
    with pytest.raises(LmforgeError, match="train.batch_size"):
        TrainConfig(batch_size=True)
