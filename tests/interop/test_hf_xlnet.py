"""XLNet from and to Hugging Face: transformers' logits with and without a permutation, with segments and padding,
across two segments of memory, for its attention variants; an export transformers loads with the same logits; and
its generation-style next-token call."""

import dataclasses
import json

import pytest
import torch
from helpers import write_xlnet_tokenizer
from safetensors.torch import save_file

from lmforge.checkpoint import unique_state_dict
from lmforge.interop.hf_xlnet import hf_xlnet_config, xlnet_config, xlnet_to_hf, xlnet_to_ours
from lmforge.models.xlnet import XLNet

SHAPE = dict(vocab_size=99, d_model=32, n_layer=2, n_head=4, d_inner=37, mem_len=8)
VARIANTS = {
    "bi": {},
    "uni-same-length": dict(attn_type="uni", same_length=True),
    "bi-data-clamped": dict(bi_data=True, clamp_len=3, ff_activation="gelu_new"),
}


def hf_model(architecture="XLNetLMHeadModel", **extra):
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, architecture)(transformers.XLNetConfig(**(SHAPE | extra))).eval()
    with torch.no_grad():  # larger weights than XLNet's 0.02 init, so logits differ by far more than the tolerance
        for name, p in model.named_parameters():
            if "layer_norm" not in name:
                p.normal_(0, 0.5)
    return model


def ours_from(hf) -> XLNet:
    cfg = xlnet_config(hf.config.to_dict())
    model = XLNet(cfg).eval()
    model.load_state_dict(xlnet_to_ours(cfg, hf.state_dict(), model.state_dict()))
    return model


def inputs(t=7):
    torch.manual_seed(1)
    ids = torch.randint(0, SHAPE["vocab_size"], (4, t))
    segments = torch.tensor([[0] * 4 + [1] * (t - 4)] * 4)
    mask = torch.ones(4, t)
    mask[1, t - 2 :] = 0
    perm_mask = (torch.rand(4, t, t) > 0.5).float()
    target_mapping = torch.zeros(4, 2, t)
    target_mapping[:, 0, 2] = target_mapping[:, 1, t - 1] = 1.0
    return ids, segments, mask, perm_mask, target_mapping


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant):
    hf = hf_model(**VARIANTS[variant])
    model = ours_from(hf)
    ids, segments, mask, perm_mask, target_mapping = inputs()
    with torch.no_grad():
        assert max_diff(model(ids)[0], hf(ids).logits) < 1e-4
        assert max_diff(model(ids, segments)[0], hf(ids, token_type_ids=segments).logits) < 1e-4
        if hf.config.attn_type == "uni":
            return  # transformers' causal XLNet fails on any padding or perm mask (an in-place broadcast)
        ref = hf(ids, token_type_ids=segments, attention_mask=mask).logits
        assert max_diff(model(ids, segments, mask)[0], ref) < 1e-4
        ref = hf(ids, perm_mask=perm_mask, target_mapping=target_mapping, token_type_ids=segments).logits
        ours = model(ids, segments, perm_mask=perm_mask, target_mapping=target_mapping)[0]
        assert ours.shape == (4, 2, 99) and max_diff(ours, ref) < 1e-4
        assert ref.abs().max() > 1.0  # logits large enough that the tolerance means something


def test_memory_across_two_segments_matches_transformers():
    hf = hf_model()
    model = ours_from(hf)
    ids, segments, mask, perm_mask, target_mapping = inputs()
    later = torch.randint(0, 99, (4, 7))
    with torch.no_grad():
        first = hf(ids, token_type_ids=segments, use_mems=True)
        logits, mems = model(ids, segments)
        assert all(max_diff(ours, theirs.transpose(0, 1)) < 1e-4 for ours, theirs in zip(mems, first.mems, strict=True))
        ref = hf(later, mems=first.mems, token_type_ids=segments, perm_mask=perm_mask, target_mapping=target_mapping)
        ours, later_mems = model(later, segments, perm_mask=perm_mask, target_mapping=target_mapping, mems=mems)
        assert max_diff(ours, ref.logits) < 1e-4
        again = hf(
            later, mems=first.mems, token_type_ids=segments, perm_mask=perm_mask, use_mems=True
        ).mems  # 14 states each, the last mem_len = 8 kept
        assert later_mems[0].shape == (4, 8, 32)
        assert all(max_diff(a, b.transpose(0, 1)) < 1e-4 for a, b in zip(later_mems, again, strict=True))
        without = model(later, segments, perm_mask=perm_mask, target_mapping=target_mapping)[0]
        assert max_diff(without, ref.logits) > 1e-2  # the memory matters


def test_xlnetmodel_without_lm_head_imports_its_stack():
    hf = hf_model("XLNetModel")
    model = ours_from(hf)
    ids, segments, mask, _, _ = inputs()
    with torch.no_grad():
        ref = hf(ids, token_type_ids=segments, attention_mask=mask).last_hidden_state
        assert max_diff(model.hidden(ids, mask, segments)[0], ref) < 1e-4
    assert not model.lm_head.bias.any()


@pytest.mark.parametrize("untie_r", [True, False])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, untie_r):
    import transformers

    torch.manual_seed(5)
    # untie_r false: biases shared across the layers, written to each of transformers' layers
    model = XLNet(dataclasses.replace(xlnet_config(SHAPE), untie_r=untie_r)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # weights of our own, not the ones imported
    save_file(xlnet_to_hf(model.cfg, unique_state_dict(model)), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(hf_xlnet_config(model.cfg)))
    hf = transformers.XLNetLMHeadModel.from_pretrained(tmp_path).eval()
    ids, segments, mask, perm_mask, target_mapping = inputs()
    with torch.no_grad():
        ref = hf(ids, perm_mask=perm_mask, target_mapping=target_mapping, token_type_ids=segments).logits
        ours = model(ids, segments, perm_mask=perm_mask, target_mapping=target_mapping)[0]
        assert max_diff(ours, ref) < 1e-4
        assert (
            max_diff(model(ids, segments, mask)[0], hf(ids, token_type_ids=segments, attention_mask=mask).logits) < 1e-4
        )


def test_next_token_logits_match_transformers_generation():
    hf = hf_model(mem_len=None)
    model = ours_from(hf)
    ids = inputs()[0]
    with torch.no_grad():
        step = {k: v for k, v in hf.prepare_inputs_for_generation(ids).items() if v is not None}
        assert max_diff(model.next_token_logits(ids), hf(**step).logits[:, -1]) < 1e-4
        ref = hf.generate(input_ids=ids, do_sample=False, num_beams=1, max_new_tokens=8, use_mems=False)
        tokens = ids
        for _ in range(8):
            tokens = torch.cat([tokens, model.next_token_logits(tokens).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, ref)


@pytest.mark.parametrize("architecture", ["XLNetLMHeadModel", "XLNetModel"])
def test_a_saved_transformers_directory_loads_through_lmforge_load(tmp_path, architecture):
    import lmforge

    hf = hf_model(architecture)
    hf.save_pretrained(tmp_path)
    write_xlnet_tokenizer(tmp_path)
    loaded = lmforge.load(tmp_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.config.family == "xlnet" and model.family == "xlnet"
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.kind) == (3, 4, 5, "unigram")
    ids, segments, mask, perm_mask, target_mapping = inputs()
    with torch.no_grad():
        if architecture == "XLNetModel":
            ref = hf(ids, token_type_ids=segments, attention_mask=mask).last_hidden_state
            assert max_diff(model.hidden(ids, mask, segments)[0], ref) < 1e-4
            return
        ref = hf(ids, perm_mask=perm_mask, target_mapping=target_mapping, token_type_ids=segments).logits
        assert max_diff(model(ids, segments, perm_mask=perm_mask, target_mapping=target_mapping)[0], ref) < 1e-4


def test_convert_to_hf_writes_a_directory_transformers_loads_with_the_same_logits(tmp_path):
    import transformers
    from helpers import tiny_checkpoint

    from lmforge.checkpoint import save_checkpoint
    from lmforge.checkpoint.convert import convert_from_hf, convert_to_hf
    from lmforge.checkpoint.loader import load

    ours = load(tiny_checkpoint(tmp_path / "run", family="xlnet"))
    with torch.no_grad():
        for p in ours.model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # weights far from the init, so the comparison means something
    checkpoint = save_checkpoint(tmp_path / "run", 2, ours.model, ours.config, ours.tokenizer)
    out = convert_to_hf(checkpoint, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(hf, transformers.XLNetLMHeadModel)
    encoded = hf_tokenizer(["the film was good", "bad"], padding=True, return_tensors="pt")
    tok = ours.tokenizer
    assert encoded["input_ids"][0, -2:].tolist() == [tok.sep_id, tok.cls_id]  # XLNet's A <sep> <cls>
    assert encoded["input_ids"][1, 0].item() == tok.pad_id  # padded on the left
    assert encoded["token_type_ids"][0, -1].item() == 2
    ids, segments, mask = encoded["input_ids"], encoded["token_type_ids"], encoded["attention_mask"]
    with torch.no_grad():
        ref = hf(ids, token_type_ids=segments, attention_mask=mask).logits
        assert max_diff(ours.model(ids, segments, mask)[0], ref) < 1e-4
    back = load(convert_from_hf(out, tmp_path / "back"))  # and back again
    with torch.no_grad():
        assert max_diff(back.model(ids, segments, mask)[0], ref) < 1e-4
