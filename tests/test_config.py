import pytest

from lmforge.config import (
    GPTConfig,
    RunConfig,
    TrainConfig,
    apply_override,
    load_config,
    load_finetune_config,
    read_yaml,
    sections_of,
    shipped_configs,
)
from lmforge.errors import LmforgeError
from lmforge.tokenizer import MAX_VOCAB_SIZE


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


def test_duplicate_keys_are_refused(tmp_path):
    """PyYAML keeps the last of two equal keys silently: the edit a user made first would be lost."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  batch_size: 2\n  lr: 0.01\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"c.yaml: key 'lr' appears twice \(line 2, and again on line 4\); keep one"):
        load_config(str(path))
    path.write_text("task:\n  task: ner\nfinetune:\n  epochs: 1\ntask:\n  task: qa\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"c.yaml: key 'task' appears twice \(line 1, and again on line 5\)"):
        load_finetune_config(path)
    path.write_text("model: {n_layer: 2, n_layer: 3}\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"key 'n_layer' appears twice \(line 1, and again on line 1\)"):
        load_config(str(path))
    path.write_text("base: &b {lr: 1, seed: 3}\ntrain:\n  <<: *b\n  lr: 2\n", encoding="utf-8")
    assert read_yaml(path, "train")["train"] == {"lr": 2, "seed": 3}  # a key over a merged one overrides it


@pytest.mark.parametrize(
    ("family", "tokenizer", "least"), [("gpt", "bpe", 257), ("bert", "bpe", 261), ("bert", "wordpiece", 6)]
)
def test_vocab_size_range_is_the_tokenizers(family, tokenizer, least):
    def build(size):
        return RunConfig.from_dict({"family": family, "data": {"tokenizer": tokenizer, "vocab_size": size}})

    assert build(least).data.vocab_size == least and build(MAX_VOCAB_SIZE).data.vocab_size == MAX_VOCAB_SIZE
    for size in (least - 1, MAX_VOCAB_SIZE + 1):
        with pytest.raises(LmforgeError, match=rf"data.vocab_size = {size} .*tokenizer = {tokenizer}: give {least} to"):
            build(size)


@pytest.mark.parametrize("tokenizer", ["char", "tokenizer.json"])
def test_vocab_size_is_ignored_where_the_vocabulary_is_given(tokenizer):
    """A char tokenizer's vocabulary is the data's characters, a tokenizer.json's its own."""
    assert RunConfig.from_dict({"data": {"tokenizer": tokenizer, "vocab_size": 10**9}}).data.vocab_size == 10**9


def test_seq_len_cannot_exceed_context():
    with pytest.raises(LmforgeError, match="seq_len"):
        RunConfig(model=GPTConfig(max_seq_len=16), train=TrainConfig(seq_len=32))


def test_int_accepted_for_float_and_bool_rejected_for_int():
    assert TrainConfig(lr=1).lr == 1.0
    with pytest.raises(LmforgeError, match="train.batch_size"):
        TrainConfig(batch_size=True)
