"""Explanations: integrated gradients against an exactly linear model and the completeness axiom, attention maps
against the softmax formula by hand, and the HTML/PNG outputs (self-contained, escaped, valid)."""

import math

import pytest
import torch
from helpers import tiny_checkpoint, tiny_gpt
from torch import nn

from lmforge.config import BertConfig
from lmforge.explain.attributions import Explanation, attention_maps, explain, integrated_gradients
from lmforge.explain.html import write_html
from lmforge.models import Bert
from lmforge.models.heads import SequenceClassifier, TokenClassifier
from lmforge.tokenizer import Tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class LinearOverEmbeddings(nn.Module):
    """logit = sum_t w . x_t over the word embeddings x_t: IG of token t is exactly (x_t - x'_t) . w."""

    def __init__(self):
        super().__init__()
        self.backbone = tiny_gpt().double()
        self.w = nn.Linear(16, 2, bias=False, dtype=torch.float64)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.w(self.backbone.tok_emb(input_ids)).sum(1)


def tiny_bert(vocab_size=23, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, n_layer=2, n_head=2, d_model=16, d_ff=32, max_seq_len=32, dropout=0.0)
    bert = Bert(cfg).double()
    for p in bert.parameters():  # large matrices: peaked attention, logits that move with the input
        if p.dim() == 2:
            nn.init.normal_(p, std=0.2)
    return bert


def classifier(backbone, n_labels=3, token_task=False):
    """The fine-tuning heads with a large random classifier layer, so logits move with the input."""
    pooling = "cls" if isinstance(backbone, Bert) else "last"
    model = TokenClassifier(backbone, n_labels) if token_task else SequenceClassifier(backbone, n_labels, pooling)
    torch.manual_seed(1)
    nn.init.normal_(model.classifier.weight)
    return model.double().eval()


def tiny(family):
    return tiny_bert() if family == "bert" else tiny_gpt()


IDS = torch.tensor([[2, 7, 11, 5, 19, 8, 3]])  # [CLS]-like first and [SEP]-like last, kept by the baseline
KEEP = torch.tensor([[True, False, False, False, False, False, True]])
MASK = torch.ones_like(IDS)
TYPES = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_ig_on_a_linear_model_is_exactly_the_input_difference_times_the_weight(baseline):
    model = LinearOverEmbeddings().eval()
    emb = model.backbone.tok_emb.weight.detach()
    x = emb[IDS[0]]
    x0 = emb[torch.zeros_like(IDS[0])] if baseline == "pad" else torch.zeros_like(x)
    x0 = torch.where(KEEP[0, :, None], x, x0)
    attributions, delta = integrated_gradients(model, IDS, MASK, 1, steps=3, baseline=baseline, pad_id=0, keep=KEEP)
    torch.testing.assert_close(attributions, (x - x0) @ model.w.weight[1].detach(), atol=1e-12, rtol=0)
    assert abs(delta) < 1e-12
    assert attributions[0] == 0 and attributions[-1] == 0  # kept tokens: x = x'


@pytest.mark.parametrize(
    "family, token_task, target",
    [("bert", False, 2), ("gpt", False, 0), ("bert", True, (3, 1)), ("gpt", True, (5, 2))],
)
def test_attributions_add_up_to_the_logit_change_from_the_baseline(family, token_task, target):
    model = classifier(tiny(family), token_task=token_task)
    types = TYPES if family == "bert" else None

    def logit(ids):
        with torch.no_grad():
            out = model(ids, MASK, token_type_ids=types)
        return (out[0, target[0], target[1]] if token_task else out[0, target]).item()

    change = logit(IDS) - logit(torch.where(KEEP, IDS, 0))  # the pad baseline as token ids, pad_id 0
    assert abs(change) > 0.1  # a model whose logit does not move would make the check empty
    deltas = []
    for steps in (2, 8, 32):
        attributions, delta = integrated_gradients(model, IDS, MASK, target, types, steps, keep=KEEP, batch_size=5)
        assert delta == pytest.approx(attributions.sum().item() - change, abs=1e-9)
        deltas.append(abs(delta))
    assert deltas == sorted(deltas, reverse=True) and deltas[-1] < 1e-6 * abs(change)  # converges with steps


def test_ig_refuses_a_model_in_training_mode():
    model = classifier(tiny_gpt()).train()
    with pytest.raises(ValueError, match="eval"):
        integrated_gradients(model, IDS, MASK, 0)


def softmax_by_hand(q, k, allowed):
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def heads(x, n_head):
    t, d = x.shape
    return x.view(t, n_head, d // n_head).transpose(0, 1)  # (n_head, T, d_head)


def test_bert_attention_maps_match_the_formula_and_ignore_padding():
    bert = tiny_bert()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    maps = attention_maps(bert, IDS, mask, TYPES)
    assert len(maps) == 2 and maps[0].shape == (2, 7, 7)
    with torch.no_grad():
        x = bert.embeddings(IDS, TYPES)[0]  # post-norm: the first block's attention reads the embeddings as they are
        q, k, _ = (heads(t, 2) for t in bert.encoder.blocks[0].attn.qkv(x).chunk(3, dim=-1))
    expected = softmax_by_hand(q, k, mask.bool()[0][None, None, :].expand(2, 7, 7))
    torch.testing.assert_close(maps[0], expected, atol=1e-12, rtol=0)
    for w in maps:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 7, dtype=w.dtype))
        assert (w[:, :, 5:] == 0).all()  # padded keys


def test_gpt_attention_maps_match_the_formula_and_are_causal():
    gpt = tiny_gpt().double()
    maps = attention_maps(classifier(tiny_gpt()), IDS, MASK)  # through a classifier: its backbone
    maps_bare = attention_maps(gpt, IDS, MASK)
    with torch.no_grad():
        x = gpt.tok_emb(IDS) + gpt.pos_emb(torch.arange(7))
        block = gpt.decoder.blocks[0]
        q, k, _ = (heads(t, 2) for t in block.attn.qkv(block.ln_attn(x[0])).chunk(3, dim=-1))
    expected = softmax_by_hand(q, k, torch.ones(7, 7, dtype=torch.bool).tril())
    torch.testing.assert_close(maps_bare[0], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(maps[0], expected, atol=1e-12, rtol=0)
    assert (maps[1].triu(1) == 0).all()


@pytest.fixture(scope="module")
def wordpiece():
    texts = ["the film was great and the actors were wonderful", "a dull boring film, the plot was bad"] * 20
    return Tokenizer.train_wordpiece(texts, vocab_size=80)


def read_outputs(explanation):
    page = explanation.html.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and 'src="//' not in page  # self-contained
    for png in explanation.pngs:
        assert png.read_bytes().startswith(PNG_MAGIC)
    return page


def test_explain_writes_a_self_contained_page_and_pngs(tmp_path, wordpiece):
    import matplotlib.image

    torch.manual_seed(1)
    model = classifier(tiny_bert(wordpiece.vocab_size), n_labels=2)
    e = explain(model, wordpiece, "the film was great", tmp_path / "out", text_pair="the plot was bad", steps=16,
                labels=["negative", "positive"])  # fmt: skip
    assert e.tokens[0] == "[CLS]" and e.tokens.count("[SEP]") == 2 and "great" in e.tokens
    assert sum(e.probabilities.values()) == pytest.approx(1.0)
    assert e.predicted == max(e.probabilities, key=e.probabilities.get) and e.target == e.predicted
    assert e.attributions[0] == 0 and e.attributions[-1] == 0 and abs(e.delta) < 1e-6
    assert [p.name for p in e.pngs] == ["attributions.png", "attention-L0.png", "attention-L1.png"]
    assert matplotlib.image.imread(e.pngs[1]).ndim == 3
    page = read_outputs(e)
    for token in e.tokens:
        assert f">{token}</span>" in page
    assert page.count("data:image/png;base64,") == 3
    assert not list((tmp_path / "out").glob(".tmp-*"))  # every file renamed into place
    other = explain(model, wordpiece, "the film was great", tmp_path / "other", target="negative", steps=4,
                    labels=["negative", "positive"])  # fmt: skip
    assert other.target == "negative"


def test_explain_a_token_task_on_gpt(tmp_path):
    texts = ["<b>cats</b> & dogs $5", "dogs & cats"] * 5
    bpe = Tokenizer.train_bpe(texts, vocab_size=300)
    torch.manual_seed(1)
    model = classifier(tiny_gpt(vocab_size=bpe.vocab_size), token_task=True)
    e = explain(model, bpe, "<b>cats</b> & dogs $5", tmp_path, target=1, position=2, steps=8)
    assert e.position == 2 and e.target == "LABEL_1" and len(e.pngs) == 3
    page = read_outputs(e)
    assert "<b>cats" not in page and "&lt;" in page


def test_explain_rejects_unknown_labels_long_texts_and_positions_of_a_sequence_task(tmp_path, wordpiece):
    from lmforge.errors import LmforgeError

    model = classifier(tiny_bert(wordpiece.vocab_size), n_labels=2)
    with pytest.raises(LmforgeError, match="labels are negative, positive"):
        explain(model, wordpiece, "great", tmp_path, target="neutral", labels=["negative", "positive"])
    with pytest.raises(LmforgeError, match="at most 32"):
        explain(model, wordpiece, "the film " * 30, tmp_path)
    with pytest.raises(LmforgeError, match="token-classification"):
        explain(model, wordpiece, "great", tmp_path, position=1)


def test_html_escapes_token_text(tmp_path):
    tokens = ["[CLS]", "<script>alert(1)</script>", "a&b", '"q"', "[SEP]"]
    e = Explanation(tokens, [0.0, 0.5, -0.25, 0.1, 0.0], 1e-9, {"<i>pos</i>": 0.7, "neg": 0.3}, "<i>pos</i>",
                    "<i>pos</i>", None)  # fmt: skip
    plots = tmp_path / "attributions.png"
    plots.write_bytes(PNG_MAGIC)
    e.pngs = [plots, plots]
    page = write_html(e, [torch.full((1, 5, 5), 0.2)], "pad", 8, tmp_path / "page.html").read_text(encoding="utf-8")
    assert "alert(1)" in page and "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 2  # the page's own: the data block and the code
    assert "<i>pos" not in page and "a&amp;b" in page


def finetuned_checkpoint(tmp_path, family, task):
    """A fine-tuned checkpoint as lmforge finetune writes it: a head on a tiny backbone, and the task section."""
    import dataclasses

    from lmforge.checkpoint import load_model, save_checkpoint
    from lmforge.config import TaskConfig
    from lmforge.tasks import get_task

    backbone, tokenizer, cfg = load_model(tiny_checkpoint(tmp_path / "base", family))
    labels = ["O", "B-PER", "B-LOC", "I-LOC"] if task == "ner" else ["neg", "pos"]
    info = TaskConfig(task=task, labels=labels, pooling="cls" if family == "bert" else "last")
    extra = {"task": dataclasses.asdict(info)}
    head = get_task(task).build_head(backbone, info)
    return save_checkpoint(tmp_path / "ft", 1, head, cfg, tokenizer, extra=extra)


@pytest.mark.parametrize("family, task", [("bert", "classification"), ("gpt", "ner")])
def test_cli_explains_a_finetuned_checkpoint(tmp_path, capsys, family, task):
    from lmforge.cli.main import main

    path = finetuned_checkpoint(tmp_path, family, task)
    out_dir = tmp_path / "out"
    argv = ["explain", str(path), "--text", "the film was great", "--steps", "8", "--out", str(out_dir), "--device",
            "cpu", "--target", "pos" if task == "classification" else "B-PER"]  # fmt: skip
    if task == "ner":
        argv += ["--position", "1"]
    code = main(argv)
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 3, out
    assert out[0].startswith("predicted ") and "logit of " + argv[-1 if task == "classification" else -3] in out[1]
    assert "film'" in out[1]  # the top tokens are the text's own
    assert str(out_dir / "explain.html") in out[2] and (out_dir / "explain.html").is_file()
    assert len(list(out_dir.glob("attention-L*.png"))) == 2


@pytest.mark.parametrize("kind", ["missing", "language model"])
def test_cli_refuses_what_is_not_a_classifier_in_one_line(tmp_path, capsys, kind):
    from lmforge.cli.main import main

    path = tiny_checkpoint(tmp_path / "run") if kind == "language model" else tmp_path / "missing"
    code = main(["explain", str(path), "--text", "the film", "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("lmforge: error:")
    assert ("not found" if kind == "missing" else "not fine-tuned") in err[0]
    assert not (tmp_path / "out").exists()


def test_steps_out_of_range_are_refused_before_any_work(tmp_path, wordpiece):
    """100,000 Gauss-Legendre steps would build a 100,000 x 100,000 matrix (75 GiB) before the first gradient."""
    from lmforge.errors import LmforgeError

    model = classifier(tiny_bert(wordpiece.vocab_size), n_labels=2)
    for steps in (0, 100_000):
        with pytest.raises(LmforgeError, match=f"--steps {steps} is out of range: give 1 to 1000"):
            explain(model, wordpiece, "great", tmp_path / "out", steps=steps)
    assert not (tmp_path / "out").exists()
