"""Fine-tuned models to and from Hugging Face: every task class imports with transformers' logits on a padded batch
and exports back to the same class with no missing or unexpected tensor; a fine-tuned lmforge checkpoint exported
gives transformers' pipelines the labels (and the QA answer) lmforge predicts; what transformers cannot hold is
refused in one line."""

import dataclasses
import json

import pytest
import torch
from helpers import ner_sentences, padded_batch, sentiment_rows, tiny_checkpoint, write_bpe_vocab, write_wordpiece_vocab

from lmforge.checkpoint.convert import convert_from_hf, convert_to_hf
from lmforge.checkpoint.files import save_checkpoint, unique_state_dict
from lmforge.checkpoint.loader import load
from lmforge.config import TaskConfig
from lmforge.errors import LmforgeError
from lmforge.inference.predict import predict_texts
from lmforge.tasks import get_task
from lmforge.tokenizer import EOS

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
ENCODERS = {
    "Bert": dict(max_position_embeddings=40),
    "Roberta": dict(max_position_embeddings=42, type_vocab_size=1, pad_token_id=1),
    "Albert": dict(max_position_embeddings=40, embedding_size=16),
}
TASKS = {"ForSequenceClassification": "classification", "ForTokenClassification": "ner", "ForQuestionAnswering": "qa"}
LABELS = {"classification": ["neg", "pos", "mixed"], "ner": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}
AUTO = {"classification": "AutoModelForSequenceClassification", "ner": "AutoModelForTokenClassification",
        "qa": "AutoModelForQuestionAnswering"}  # fmt: skip
ARCHITECTURES = [f"{family}{head}" for family in ENCODERS for head in TASKS] + [
    "GPT2ForSequenceClassification", "GPT2ForTokenClassification"
]  # fmt: skip


def split(architecture):
    family, head = next((f, architecture[len(f) :]) for f in (*ENCODERS, "GPT2") if architecture.startswith(f))
    return family, TASKS[head]


def save_hf(architecture, path):
    """A random task model saved with safetensors and tokenizer files; biases redrawn (transformers zeroes them),
    so a bias in the wrong place shows."""
    import transformers

    family, task = split(architecture)
    path.mkdir(parents=True, exist_ok=True)
    labels = {"id2label": dict(enumerate(LABELS[task]))} if task in LABELS else {}
    if family == "GPT2":
        vocab = write_bpe_vocab(path, [EOS])  # <|endoftext|> is id 0: bos, eos and pad
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                         bos_token_id=0, eos_token_id=0, pad_token_id=0, **labels)  # fmt: skip
    else:
        vocab = write_bpe_vocab(path, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) if family == "Roberta" else None
        config = getattr(transformers, f"{family}Config")(
            vocab_size=vocab or write_wordpiece_vocab(path), **SHAPE, **ENCODERS[family], **labels
        )
    torch.manual_seed(0)
    hf = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    hf.save_pretrained(path)
    return hf


def batch(vocab_size, segments):
    """Padded ids whose padding is id 0 (GPT-2's pad, which ends no real row), and segment ids when the model has
    two."""
    ids, mask = padded_batch(vocab_size)
    ids[mask == 0] = 0
    types = (torch.arange(ids.size(1)) >= 5).long().expand_as(ids) if segments else None
    return ids, mask, types


def hf_logits(hf, ids, mask, types):
    """transformers' logits in lmforge's layout: (B, n_labels), (B, T, n_labels), or (B, 2, T) for QA."""
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, **({"token_type_ids": types} if types is not None else {}))
    return torch.stack([out.start_logits, out.end_logits], 1) if hasattr(out, "start_logits") else out.logits


def max_difference(ours, ref, mask, task):
    """Over real tokens only: padding's logits are transformers' noise, and lmforge's QA masks them."""
    if task == "classification":
        return (ours - ref).abs().max().item()
    real = mask.bool()[:, None].expand_as(ours) if task == "qa" else mask.bool()
    return (ours[real] - ref[real]).abs().max().item()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_task_class_imports_and_exports_with_transformers_logits(architecture, tmp_path):
    import transformers

    family, task = split(architecture)
    hf = save_hf(architecture, tmp_path / "hf")
    loaded = load(tmp_path / "hf")
    assert loaded.task.task == task and loaded.task.labels == LABELS.get(task, ["start", "end"])
    assert loaded.task.pooling == ("last" if family == "GPT2" else "cls")
    assert loaded.task.max_seq_len == min(384 if task == "qa" else 128, loaded.model.backbone.cfg.max_seq_len)
    ids, mask, types = batch(hf.config.vocab_size, family in ("Bert", "Albert"))
    ref = hf_logits(hf, ids, mask, types)
    with torch.no_grad():
        ours = loaded.model(ids, mask, types)
    assert max_difference(ours, ref, mask, task) < 1e-4

    out = convert_to_hf(tmp_path / "hf", tmp_path / "exported")
    back, info = getattr(transformers, AUTO[task]).from_pretrained(out, output_loading_info=True)
    assert type(back).__name__ == architecture
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert back.config.id2label == dict(enumerate(loaded.task.labels))
    assert max_difference(hf_logits(back.eval(), ids, mask, types), ref, mask, task) < 1e-4


def test_an_hf_classifier_becomes_a_fine_tuned_checkpoint_and_back(tmp_path):
    save_hf("RobertaForSequenceClassification", tmp_path / "hf")
    ckpt = convert_from_hf(tmp_path / "hf", tmp_path / "run")
    loaded, again = load(tmp_path / "hf"), load(ckpt)
    assert again.task == loaded.task
    before, after = unique_state_dict(loaded.model), unique_state_dict(again.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    out = exported(ckpt, tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["RobertaForSequenceClassification"]


def test_task_read_from_weight_names_without_architectures(tmp_path):
    for architecture in ["BertForTokenClassification", "BertForSequenceClassification",
                         "RobertaForTokenClassification", "RobertaForSequenceClassification"]:  # fmt: skip
        path = tmp_path / architecture
        save_hf(architecture, path)
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "architectures"}))
        assert load(path).task.task == split(architecture)[1], architecture


def exported(ckpt, out):
    """convert_to_hf, checked to load in transformers' Auto class with every tensor in place."""
    import transformers

    out = convert_to_hf(ckpt, out)
    task = load(ckpt).task.task
    _, info = getattr(transformers, AUTO[task]).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return out


def finetuned(tmp_path, family, task, seed=0):
    """An lmforge fine-tuned checkpoint: a pretrained tiny model (a BERT keeps its MLM head, pooler and NSP head)
    with the task's head (and pooler) drawn large, so predictions vary with the text and a lost input shows."""
    pretrained = load(tiny_checkpoint(tmp_path / f"{family}-pretrained", family, seed=seed))
    head = get_task(task.task).build_head(pretrained.model, task)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not name.startswith("backbone.") or name.startswith("backbone.pooler."):
                p.normal_(std=0.5)
    return save_checkpoint(tmp_path / f"{family}-{task.task}", 1, head, pretrained.config, pretrained.tokenizer,
                           extra={"task": dataclasses.asdict(task)})  # fmt: skip


def assert_same_labels(ours, theirs):
    """lmforge's prediction records and a text-classification pipeline's: the same labels and probabilities."""
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert max(abs(r["probabilities"][t["label"]] - t["score"]) for r, t in zip(ours, theirs, strict=True)) < 1e-4


def test_exported_bert_classifier_gives_the_pipeline_lmforge_labels(tmp_path):
    from transformers import pipeline

    ckpt = finetuned(tmp_path, "bert", TaskConfig("classification", LABELS["classification"], "cls", 32))
    assert load(ckpt).model.backbone.pooler is not None  # the pretrained pooler is the classifier's
    out = exported(ckpt, tmp_path / "hf")
    classify = pipeline("text-classification", model=str(out), tokenizer=str(out))
    texts, pair = [text for text, _ in sentiment_rows(8)], "the acting was fine"
    pairs = [{"text": text, "text_pair": pair} for text in texts]  # segment ids matter here
    assert_same_labels(predict_texts(ckpt, texts), classify(texts))
    assert_same_labels(predict_texts(ckpt, texts, pair), classify(pairs))


def test_exported_gpt_classifier_gives_the_pipeline_lmforge_labels(tmp_path):
    from transformers import pipeline

    task = TaskConfig("classification", LABELS["classification"], "last", 32)
    ckpt = finetuned(tmp_path, "gpt", task)
    with pytest.raises(LmforgeError, match="GPT2ForSequenceClassification's score has no bias"):
        convert_to_hf(ckpt, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    loaded = load(ckpt)
    loaded.model.classifier.bias.data.zero_()
    ckpt = save_checkpoint(tmp_path / "zero-bias", 1, loaded.model, loaded.config, loaded.tokenizer,
                           extra={"task": dataclasses.asdict(task)})  # fmt: skip
    out = exported(ckpt, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == loaded.tokenizer.eos_id
    texts = [text for text, _ in sentiment_rows(8)]
    assert_same_labels(predict_texts(ckpt, texts), pipeline("text-classification", model=str(out))(texts))


def test_exported_ner_model_gives_the_pipeline_lmforge_tags(tmp_path):
    from transformers import pipeline

    ckpt = finetuned(tmp_path, "bert", TaskConfig("ner", LABELS["ner"], "cls", 32))
    out = exported(ckpt, tmp_path / "hf")
    sentences = [" ".join(words) for words, _ in ner_sentences(6)]
    ours = predict_texts(ckpt, sentences)
    tagger = pipeline("token-classification", model=str(out), tokenizer=str(out), ignore_labels=[])
    for text, record, tokens in zip(sentences, ours, tagger(sentences), strict=True):
        starts = [0]
        for word in record["words"][:-1]:
            starts.append(starts[-1] + len(word) + 1)
        by_start = {}
        for token in tokens:  # a word's tag is its first subword's
            by_start.setdefault(token["start"], token["entity"])
        assert [by_start[s] for s in starts] == record["tags"], text


def test_exported_qa_model_gives_lmforge_answer(tmp_path):
    """transformers 5 has no question-answering pipeline: its model's best span (start logit + end logit over the
    context, at most max_answer_len tokens) stands in."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    task = TaskConfig("qa", ["start", "end"], "cls", 32, doc_stride=8)
    ckpt = finetuned(tmp_path, "bert", task)
    out = exported(ckpt, tmp_path / "hf")
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForQuestionAnswering.from_pretrained(out).eval()
    context = "alice saw the film in paris and bob was very bad at acting"
    for question in ["who saw the film", "where was the plot", "what was bad"]:
        enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            logits = model(**enc)
        inside = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
        score = logits.start_logits[0, :, None] + logits.end_logits[0, None, :]
        _, s, e = max((score[s, e].item(), s, e) for s in inside for e in inside if s <= e < s + task.max_answer_len)
        ours = predict_texts(ckpt, [question], pair=context)[0]
        assert ours["answer"] == context[offsets[s][0] : offsets[e][1]], question


def test_what_transformers_cannot_hold_is_refused_in_one_line(tmp_path):
    ckpt = finetuned(tmp_path, "bert", TaskConfig("classification", LABELS["classification"], "mean", 32))
    with pytest.raises(LmforgeError, match="BertForSequenceClassification pools 'cls' and this classifier pools"):
        convert_to_hf(ckpt, tmp_path / "mean")
    ckpt = finetuned(tmp_path, "bert", TaskConfig("relation", ["none", "born_in"], "cls", 32, markers=[5, 6, 7, 8]))
    with pytest.raises(LmforgeError, match="relation model has no Hugging Face class") as e:
        convert_to_hf(ckpt, tmp_path / "relation")
    assert "\n" not in str(e.value) and not (tmp_path / "mean").exists() and not (tmp_path / "relation").exists()
