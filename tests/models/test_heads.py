import pytest
import torch
from helpers import tiny_checkpoint, tiny_gpt

from lmforge.checkpoint import load_model
from lmforge.checkpoint.convert import convert_to_hf
from lmforge.models.heads import SequenceClassifier, TokenClassifier


@pytest.fixture(scope="module")
def bert_and_hf(tmp_path_factory):
    """A tiny lmforge BERT (with pooler) and the same weights exported as a Hugging Face directory."""
    tmp = tmp_path_factory.mktemp("heads")
    ckpt = tiny_checkpoint(tmp / "bert", "bert", seed=3)
    return load_model(ckpt)[0], convert_to_hf(ckpt, tmp / "hf")


def batch(vocab, b=3, t=9):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 6:] = mask[2, 3:] = False
    types = torch.zeros(b, t, dtype=torch.long)
    types[0, 5:] = 1
    return ids, mask, types


@pytest.mark.parametrize("head", ["sequence", "token"])
def test_heads_match_transformers(bert_and_hf, head):
    from transformers import BertForSequenceClassification, BertForTokenClassification

    bert, hf_dir = bert_and_hf
    ours = SequenceClassifier(bert, 3) if head == "sequence" else TokenClassifier(bert, 3)
    ref_class = BertForSequenceClassification if head == "sequence" else BertForTokenClassification
    ref = ref_class.from_pretrained(hf_dir, num_labels=3).eval()
    ours.classifier.load_state_dict(ref.classifier.state_dict())
    ours.eval()
    ids, mask, types = batch(bert.cfg.vocab_size)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).logits
        got = ours(ids, mask, types)
    keep = mask if head == "token" else torch.ones(len(ids), dtype=torch.bool)  # padded positions are free
    assert (got[keep] - expected[keep]).abs().max() < 1e-4


def test_mean_and_last_pooling_ignore_padding():
    gpt = tiny_gpt(seed=1)
    head = SequenceClassifier(gpt, 2, pooling="last").eval()
    ids = torch.randint(0, 23, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(head(padded, mask), head(ids, torch.ones(1, 5, dtype=torch.bool)))
    head.pooling = "mean"
    torch.testing.assert_close(head(padded, mask), head(ids, torch.ones(1, 5, dtype=torch.bool)))
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        SequenceClassifier(gpt, 2, pooling="cls")


def test_encoder_without_pooler_gets_its_own(bert_and_hf, tmp_path):
    roberta_like = load_model(tiny_checkpoint(tmp_path, "bert", sentence_objective="none"))[0]
    assert roberta_like.pooler is None
    head = SequenceClassifier(roberta_like, 2)
    assert head.pooler is not None and SequenceClassifier(bert_and_hf[0], 2).pooler is None
