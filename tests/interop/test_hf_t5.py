"""T5 (v1.0 and v1.1) from and to Hugging Face: transformers' logits on a padded source, its greedy generation token
for token, and an export that transformers loads with the same logits."""

import json

import pytest
import torch
from helpers import T5_SHAPE, T5_VERSIONS, t5_ours_from, t5_sources
from safetensors.torch import save_file

from lmforge.checkpoint import unique_state_dict
from lmforge.interop.hf_t5 import hf_t5_config, t5_to_hf

SHAPE, VERSIONS = T5_SHAPE, T5_VERSIONS


def hf_model(version, architecture="T5ForConditionalGeneration", **extra):
    import transformers

    torch.manual_seed(0)
    config = transformers.T5Config(**(SHAPE | VERSIONS[version] | extra))
    return getattr(transformers, architecture)(config).eval()


ours_from, source = t5_ours_from, t5_sources


@pytest.mark.parametrize("version", VERSIONS)
def test_logits_match_transformers_on_a_padded_source(version):
    hf = hf_model(version)
    model = ours_from(hf)
    ids, mask = source()
    target = torch.randint(0, SHAPE["vocab_size"], (3, 6))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target)
        enc_ref = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        logits, enc = model(ids, mask, target), model.encode(ids, mask)
    assert (logits - ref.logits).abs().max() < 1e-4
    real = mask.bool()
    assert (enc[real] - enc_ref[real]).abs().max() < 1e-4


def test_t5model_without_lm_head_imports_its_stacks():
    hf = hf_model("v1.0", "T5Model")
    model = ours_from(hf)
    ids, mask = source()
    target = torch.randint(0, SHAPE["vocab_size"], (3, 5))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target).last_hidden_state
        memory = model.encode(ids, mask)
        bias = model.decoder_bias(5, 5)
        ours, _ = model.decoder(model.tok_emb(target), None, memory, mask, position_bias=bias)
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("version", VERSIONS)
def test_greedy_generation_matches_transformers_token_for_token(version):
    # transformers' generation cache wants as many decoder layers as encoder layers; eos 31 ends some rows early
    hf = hf_model(version, num_decoder_layers=2, eos_token_id=31)
    torch.manual_seed(3)
    with torch.no_grad():  # larger weights than T5's init, so greedy text varies instead of repeating one token
        for name, p in hf.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0, 0.5)
    model = ours_from(hf)
    ids, mask = source()
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=12)
    ours = model.generate(ids, mask, max_new_tokens=12)
    ended = (ref == 31).any(dim=1)
    assert ended.any() and not ended.all() and ref.size(1) == 13  # a mixed batch: padding after eos is tested
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("version", VERSIONS)
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, version):
    import transformers

    model = ours_from(hf_model(version))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights of our own, not the ones imported
    save_file(t5_to_hf(model.cfg, unique_state_dict(model)), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf_t5_config(model.cfg)))
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, mask = source()
    target = torch.randint(0, SHAPE["vocab_size"], (3, 6))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
        assert (model(ids, mask, target) - ref).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("version", "architecture"),
    [("v1.0", "T5ForConditionalGeneration"), ("v1.1", "T5ForConditionalGeneration"), ("v1.1", "T5Model")],
)
def test_the_loader_reads_a_saved_transformers_t5(tmp_path, version, architecture):
    from helpers import write_wordpiece_vocab

    from lmforge.checkpoint.loader import load

    hf = hf_model(version, architecture)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    write_wordpiece_vocab(tmp_path)
    loaded = load(tmp_path)
    assert loaded.config.family == "t5" and loaded.model.cfg.feed_forward == VERSIONS[version]["feed_forward_proj"]
    ids, mask = source()
    target = torch.randint(0, SHAPE["vocab_size"], (3, 6))
    with torch.no_grad():
        if architecture == "T5Model":
            ref = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            ours = loaded.model.encode(ids, mask)
            assert (ours - ref)[mask.bool()].abs().max() < 1e-4
        else:
            ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
            assert (loaded.model(ids, mask, target) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("version", VERSIONS)
def test_convert_round_trip_through_an_lmforge_checkpoint_loads_in_transformers(tmp_path, version):
    import transformers
    from helpers import write_wordpiece_vocab

    from lmforge.checkpoint import convert_from_hf, convert_to_hf

    hf = hf_model(version)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    write_wordpiece_vocab(tmp_path / "hf")
    convert_from_hf(tmp_path / "hf", tmp_path / "ours")
    convert_to_hf(tmp_path / "ours", tmp_path / "back")
    back = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "back").eval()
    ids, mask = source()
    target = torch.randint(0, SHAPE["vocab_size"], (3, 6))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits
        assert (back(input_ids=ids, attention_mask=mask, decoder_input_ids=target).logits - ref).abs().max() < 1e-5
