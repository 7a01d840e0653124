"""BERT, RoBERTa and ALBERT from and to Hugging Face: every accepted architecture gives transformers' numbers on a
padded batch, exports load in transformers' Auto classes with the same outputs, round trips are exact, and bad
checkpoints are refused naming the problem."""

import json

import pytest
import torch
from helpers import padded_batch, write_bpe_vocab, write_wordpiece_vocab
from safetensors.torch import load_file, save_file

from lmforge.checkpoint import convert_to_hf, from_pretrained, save_checkpoint, unique_state_dict
from lmforge.config import BertConfig, DataConfig, RunConfig
from lmforge.errors import LmforgeError
from lmforge.interop.hf_tokenizer import load_hf_tokenizer
from lmforge.models import Bert

SHAPE = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def hf_model(architecture):
    import transformers

    family = architecture.removesuffix("Model").removesuffix("ForPreTraining").removesuffix("ForMaskedLM")
    config = getattr(transformers, f"{family}Config")
    extra = {
        "Bert": dict(max_position_embeddings=40),
        "Roberta": dict(max_position_embeddings=42, type_vocab_size=1, pad_token_id=1),
        "Albert": dict(max_position_embeddings=40, embedding_size=16),
    }[family]
    if architecture == "AlbertForMaskedLM":
        extra["num_hidden_groups"] = 3  # unshared layers
    torch.manual_seed(0)
    return family, getattr(transformers, architecture)(config(vocab_size=300, **SHAPE, **extra)).eval()


def save_hf(architecture, path):
    family, hf = hf_model(architecture)
    hf.save_pretrained(path, safe_serialization=True)
    if family == "Roberta":
        write_bpe_vocab(path, ROBERTA_SPECIALS)
    else:
        write_wordpiece_vocab(path)
    return hf


def outputs(model, ids, mask):
    """lmforge's outputs under transformers' names: MLM logits, sentence logits, or the last hidden states."""
    with torch.no_grad():
        hidden, _ = model.hidden(ids, attention_mask=mask)
    if model.mlm_head is None:
        return {"last_hidden_state": hidden}
    out = {"prediction_logits" if model.sentence_head is not None else "logits": model.mlm_logits(hidden)}
    if model.sentence_head is not None:
        out["seq_relationship_logits" if model.cfg.sentence_objective == "nsp" else "sop_logits"] = (
            model.sentence_logits(hidden)
        )
    return out


def assert_matches(model, hf, vocab_size):
    ids, mask = padded_batch(vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
    ours, real = outputs(model, ids, mask), mask.bool()
    for name, value in ours.items():
        expected = getattr(ref, name)
        value, expected = (value, expected) if value.dim() == 2 else (value[real], expected[real])
        assert (value - expected).abs().max() < 1e-4, name


ARCHITECTURES = ["BertForPreTraining", "BertForMaskedLM", "BertModel", "RobertaForMaskedLM", "RobertaModel",
                 "AlbertForPreTraining", "AlbertForMaskedLM", "AlbertModel"]  # fmt: skip


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_import_matches_and_export_loads_in_transformers(architecture, tmp_path):
    import transformers

    hf = save_hf(architecture, tmp_path / "hf")
    model, tokenizer = from_pretrained(tmp_path / "hf")
    assert not model.training and (model.mlm_head is None) == architecture.endswith("Model")
    assert_matches(model, hf, 300)
    out = convert_to_hf(tmp_path / "hf", tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    auto = transformers.AutoModel if architecture.endswith("Model") else getattr(transformers, architecture)
    assert_matches(model, auto.from_pretrained(out, local_files_only=True).eval(), 300)
    back, _ = from_pretrained(out)
    before, after = unique_state_dict(model), unique_state_dict(back)
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    ref = transformers.AutoTokenizer.from_pretrained(out)
    text = "the quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text)
    assert ref(text)["input_ids"] == [tokenizer.cls_id, *ids, tokenizer.sep_id]


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(sentence_objective="none", type_vocab_size=1, position_offset=2),
     dict(embedding_size=16, share_layers=True, sentence_objective="sop")],
    ids=["bert", "roberta", "albert"],
)  # fmt: skip
def test_lmforge_to_hf_to_lmforge_is_exact(overrides, tmp_path):
    write_wordpiece_vocab(tmp_path)
    tokenizer = load_hf_tokenizer(tmp_path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, d_model=32, max_seq_len=24, **overrides)
    model = Bert(cfg).eval()
    ckpt = save_checkpoint(
        tmp_path / "run", 1, model, RunConfig("bert", cfg, DataConfig(tokenizer="wordpiece")), tokenizer
    )
    back, _ = from_pretrained(convert_to_hf(ckpt, tmp_path / "hf"))
    before, after = unique_state_dict(model), unique_state_dict(back)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert back.cfg == cfg


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    save_hf("BertModel", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMultipleChoice"]}))
    with pytest.raises(LmforgeError, match="'BertForMultipleChoice' is not supported.*BertForMaskedLM"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(LmforgeError, match="LlamaForCausalLM.*GPT2LMHeadModel"):
        from_pretrained(tmp_path)


def test_mismatched_and_missing_tensors_are_named_with_shapes(tmp_path):
    save_hf("BertForMaskedLM", tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    key = "bert.encoder.layer.1.attention.self.key.weight"
    save_file({**weights, key: torch.zeros(32, 16)}, tmp_path / "model.safetensors")
    with pytest.raises(LmforgeError, match=rf"'{key}' has shape \(32, 16\), expected \(32, 32\)"):
        from_pretrained(tmp_path)
    del weights["bert.encoder.layer.2.output.dense.bias"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(LmforgeError, match=r"'bert.encoder.layer.2.output.dense.bias' is missing \(expected shape"):
        from_pretrained(tmp_path)


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    hf = save_hf("BertForMaskedLM", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(LmforgeError, match="pickle.*--allow-pickle"):
        from_pretrained(tmp_path)
    model, _ = from_pretrained(tmp_path, allow_pickle=True)
    assert_matches(model, hf, 300)
