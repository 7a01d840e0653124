import pytest
import torch
from helpers import tiny_checkpoint, tiny_gpt

from lmforge.checkpoint import load_model
from lmforge.checkpoint.convert import convert_to_hf
from lmforge.models.heads import EntityPairClassifier, SpanExtractor


def test_span_head_matches_transformers_bert_for_question_answering(tmp_path):
    from transformers import BertForQuestionAnswering

    ckpt = tiny_checkpoint(tmp_path / "bert", "bert", seed=4)
    bert = load_model(ckpt)[0]
    ref = BertForQuestionAnswering.from_pretrained(convert_to_hf(ckpt, tmp_path / "hf")).eval()
    ours = SpanExtractor(bert).eval()
    ours.qa_outputs.load_state_dict(ref.qa_outputs.state_dict())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, bert.cfg.vocab_size, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = mask[2, 4:] = False
    types = (torch.arange(11) >= 5).long().expand(3, -1)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask.long(), token_type_ids=types)
        got = ours(ids, mask, types)
    assert (got[:, 0][mask] - expected.start_logits[mask]).abs().max() < 1e-4
    assert (got[:, 1][mask] - expected.end_logits[mask]).abs().max() < 1e-4
    assert (got.softmax(-1)[~mask[:, None].expand_as(got)] == 0).all()  # padding is never a start or an end


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_new_rows_start_at_the_mean_and_old_logits_stay(tmp_path, family):
    model = load_model(tiny_checkpoint(tmp_path / family, family, seed=1))[0]
    table = model.embeddings.word if family == "bert" else model.tok_emb
    old, n = table.weight.detach().clone(), table.num_embeddings
    ids = torch.randint(5, n, (1, 6))
    before = model(ids)[0] if family == "bert" else model(ids)
    model.add_token_rows([n, n + 1, n + 3])
    assert model.cfg.vocab_size == table.num_embeddings == n + 4 and table.weight.shape == (n + 4, old.size(1))
    torch.testing.assert_close(table.weight[:n], old)
    torch.testing.assert_close(table.weight[n], old.mean(0))
    after = model(ids)[0] if family == "bert" else model(ids)
    torch.testing.assert_close(after[..., :n], before)  # the old vocabulary predicts as before
    if family == "gpt":
        assert model.lm_head.weight is model.tok_emb.weight


def test_relation_head_reads_the_states_at_e1_and_e2():
    gpt = tiny_gpt(seed=2, vocab_size=30)
    head = EntityPairClassifier(gpt, 3, [20, 21, 22, 23]).eval()
    ids = torch.tensor([[1, 20, 5, 21, 2, 22, 6, 23], [22, 7, 23, 3, 20, 8, 21, 4]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    hidden, _ = gpt.hidden(ids, mask)
    expected = head.classifier(torch.cat([hidden[[0, 1], [1, 4]], hidden[[0, 1], [5, 0]]], -1))
    torch.testing.assert_close(head(ids, mask), expected)
