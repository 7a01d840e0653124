"""fill-mask on a tiny pretrained encoder: the fillers are the model's own top predictions, in English and Chinese."""

import pytest
import torch

from lmforge.checkpoint import load_model
from lmforge.config import load_config
from lmforge.errors import LmforgeError
from lmforge.inference.fill_mask import fill_mask
from lmforge.recipes.pretrain import train

TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_seq_len=32", "data.vocab_size=400",
        "train.max_steps=10", "train.eval_every=0", "train.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def bert(mixed_documents):
    out = mixed_documents.parent / "bert"
    train(load_config("bert-small", [*TINY, f"data.path={mixed_documents}", f"train.out={out}"]))
    return load_model(out, family="bert")


def test_fillers_are_the_top_of_the_models_distribution(bert):
    model, tokenizer, _ = bert
    [fillers] = fill_mask(model, tokenizer, "one the [MASK] lofega lotumi the lofega.", top_k=4)
    probabilities = [p for _, p in fillers]
    assert len(fillers) == 4 and probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    ids = [tokenizer.cls_id, *tokenizer.encode("one the [MASK] lofega lotumi the lofega."), tokenizer.sep_id]
    with torch.no_grad():
        logits = model.mlm_logits(model.hidden(torch.tensor([ids]))[0][0, ids.index(tokenizer.mask_id)])
    logits[tokenizer.special_ids] = float("-inf")
    best = logits.softmax(-1).topk(4)
    assert [f for f, _ in fillers] == [tokenizer.decode([i]) for i in best.indices.tolist()]
    assert probabilities == pytest.approx(best.values.tolist())
    assert not {f for f, _ in fillers} & {"[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"}


def test_chinese_and_several_masks(bert):
    model, tokenizer, _ = bert
    masks = fill_mask(model, tokenizer, "今天[MASK]气很好。我喜欢喝[MASK]。", top_k=3)
    assert len(masks) == 2 and all(len(fillers) == 3 for fillers in masks)
    assert all(filler and p > 0 for fillers in masks for filler, p in fillers)


def test_mistakes(bert, tmp_path, corpus):
    model, tokenizer, _ = bert
    with pytest.raises(LmforgeError, match="no \\[MASK\\]"):
        fill_mask(model, tokenizer, "nothing to fill")
    with pytest.raises(LmforgeError, match="top-k"):
        fill_mask(model, tokenizer, "the [MASK]", top_k=0)
    with pytest.raises(LmforgeError, match="at most 32"):
        fill_mask(model, tokenizer, "the [MASK] " + "word " * 40)
    gpt = train(load_config("char-small", [*TINY[:4], "train.max_steps=1", "train.progress=false",
                                           f"data.path={corpus}", f"train.out={tmp_path / 'gpt'}"]))  # fmt: skip
    with pytest.raises(LmforgeError, match="holds a gpt model"):
        load_model(gpt.checkpoint, family="bert")


def test_roberta_reads_mask_and_its_own_mask_token(mixed_documents, tmp_path):
    train(load_config("roberta-small", [*TINY, f"data.path={mixed_documents}", f"train.out={tmp_path / 'r'}"]))
    model, tokenizer, _ = load_model(tmp_path / "r")
    ours = fill_mask(model, tokenizer, "one the [MASK] lofega lotumi")
    assert ours == fill_mask(model, tokenizer, "one the <mask> lofega lotumi")
    assert all(not filler.startswith(" ") for filler, _ in ours[0])
