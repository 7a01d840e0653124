"""T5: cached decoding equals a full pass, source padding changes nothing, the config refuses bad values by name
(generation after eos is checked against transformers in tests/interop/test_hf_t5.py)."""

import pytest
import torch

from lmforge.config import T5Config
from lmforge.errors import LmforgeError
from lmforge.models.t5 import T5


def small(**kw) -> T5:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, n_layer=2, n_decoder_layer=3, n_head=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout=0.0) | kw  # fmt: skip
    return T5(T5Config(**cfg)).eval()


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_cached_decoding_equals_a_full_pass(feed_forward):
    model = small(feed_forward=feed_forward, tie_embeddings=feed_forward == "relu")
    src = torch.randint(2, 64, (2, 9))
    mask = torch.ones_like(src)
    mask[1, 6:] = 0
    target = torch.randint(2, 64, (2, 7))
    with torch.no_grad():
        full = model(src, mask, target)
        memory = model.encode(src, mask)
        cache = model.new_cache(2, 7)
        steps = [model.decode(target[:, :3], memory, mask, cache)]  # a prefix, then one token at a time
        steps += [model.decode(target[:, i : i + 1], memory, mask, cache) for i in range(3, 7)]
    assert len(cache.cross) == 3  # cross-attention keys/values computed once per layer
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


def test_source_padding_changes_nothing():
    model = small()
    src = torch.randint(2, 64, (1, 5))
    target = torch.randint(2, 64, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        alone = model(src, None, target)
        assert (model(padded, mask, target) - alone).abs().max() < 1e-5
        assert torch.equal(model.generate(padded, mask, 6), model.generate(src, None, 6))


def test_tied_head_shares_the_embedding_and_rescales():
    tied, untied = small(), small(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 64 * 32


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("n_decoder_layer", 0, "n_decoder_layer"), ("eos_id", 64, "eos_id"), ("feed_forward", "gelu", "feed_forward"),
     ("relative_attention_num_buckets", 2, "buckets")],
)  # fmt: skip
def test_config_names_the_bad_field(field, value, words):
    with pytest.raises(LmforgeError, match=words):
        T5Config(vocab_size=64, **{field: value})


def test_training_a_t5_config_is_one_line_error(tmp_path, capsys):
    from lmforge.cli.main import main

    (tmp_path / "t5.yaml").write_text("family: t5\nmodel:\n  vocab_size: 64\n  d_model: 32\n", encoding="utf-8")
    (tmp_path / "corpus.txt").write_text("some text to train on\n" * 20, encoding="utf-8")
    for verb in ("train", "pretrain"):
        code = main([verb, "--config", str(tmp_path / "t5.yaml"), "--data", str(tmp_path / "corpus.txt"),
                     "--out", str(tmp_path / verb)])  # fmt: skip
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "t5" in lines[0], lines


def test_pretraining_a_t5_refuses_a_tokenizer_without_its_special_tokens(tmp_path):
    """T5 pretrains with span corruption (tests/objectives/test_span_corruption.py), which a char tokenizer cannot
    serve: no pad, end of sequence or sentinels."""
    from lmforge.config import DataConfig, RunConfig, TrainConfig

    data = DataConfig(path=str(tmp_path / "corpus.txt"))
    with pytest.raises(LmforgeError, match="char has no pad, end or sentinel"):
        RunConfig("t5", T5Config(vocab_size=64, d_model=32), data, TrainConfig(out=str(tmp_path / "out")))
