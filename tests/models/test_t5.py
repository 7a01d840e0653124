"""The encoder-decoder, as T5 and as the original Transformer: cached decoding equals a full pass, source padding
changes nothing, the config refuses bad values by name (generation after eos is checked against transformers in
tests/interop/test_hf_t5.py)."""

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


ORIGINAL = dict(position="sinusoidal", norm="post", norm_type="layer", bias=True, max_seq_len=16)  # Vaswani et al.
VARIANTS = {
    "t5": dict(feed_forward="relu"),
    "t5-v1.1": dict(feed_forward="gated-gelu", tie_embeddings=False),
    "original": ORIGINAL,
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_equals_a_full_pass(variant):
    model = small(**VARIANTS[variant])
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


@pytest.mark.parametrize("variant", VARIANTS)
def test_source_padding_changes_nothing(variant):
    model = small(**VARIANTS[variant])
    src = torch.randint(2, 64, (1, 5))
    target = torch.randint(2, 64, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        alone = model(src, None, target)
        assert (model(padded, mask, target) - alone).abs().max() < 1e-5
        assert torch.equal(model.generate(padded, mask, 6), model.generate(src, None, 6))


def test_the_original_transformer_is_built_as_configured():
    """Sinusoidal encodings added to sqrt(d_model)-scaled embeddings, LayerNorm with biases after each residual,
    no final norm, no relative position bias, no rescaled output; and it refuses positions past max_seq_len."""
    from lmforge.nn.positions import sinusoidal_table

    model = small(**ORIGINAL)
    names = dict(model.named_parameters())
    assert "encoder_bias.embed.weight" not in names and "encoder.blocks.0.ln_attn.bias" in names
    assert isinstance(model.encoder.ln_final, torch.nn.Identity) and not model.encoder.blocks[0].pre_norm
    ids = torch.tensor([[5, 9, 3]])
    expected = model.tok_emb(ids) * 32**0.5 + sinusoidal_table(16, 32)[:3]
    torch.testing.assert_close(model._embed(ids, 0), expected)
    hidden = model.decoder(model._embed(ids, 0), None, model.encode(ids), None)[0]
    torch.testing.assert_close(model.decode(ids, model.encode(ids)), model.lm_head(hidden))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.encode(torch.randint(2, 64, (1, 17)))


def test_only_t5_style_models_export_to_hugging_face():
    from lmforge.interop.hf_t5 import hf_t5_config

    with pytest.raises(LmforgeError, match="position sinusoidal, model.norm post"):
        hf_t5_config(small(**ORIGINAL).cfg)


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
