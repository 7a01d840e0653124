import csv
import json
import math

import pytest
from helpers import FAST, ner_sentences, tiny_checkpoint, write_jsonl

from lmforge.checkpoint import load_finetuned
from lmforge.cli.main import main
from lmforge.config import FinetuneConfig
from lmforge.data.documents import split_sentences
from lmforge.errors import LmforgeError
from lmforge.inference.triples import (
    bio_mentions,
    build_graph,
    encode_pairs,
    extract_triples,
    find_mentions,
    mention_pairs,
    node_key,
)
from lmforge.recipes.finetune import finetune

pytestmark = pytest.mark.usefixtures("one_thread")

# Planted: a person followed, anywhere later or earlier, by a place lives there; every other pair has no relation.
TEXT = "Alice was the Paris city film\nBob was very Rome city\nthe film was alice  Oslo city\n"
EXPECTED = {("Alice", "lives_in", "Paris city"), ("Bob", "lives_in", "Rome city"), ("alice", "lives_in", "Oslo city")}


def relation_records(n, seed=0):
    """Every ordered pair of mentions of ner_sentences: lives_in from a person to a place, else no_relation."""
    records = []
    for words, tags in ner_sentences(n, seed):
        text = " ".join(words)
        found = bio_mentions(text, 0, tags)
        for head, tail in mention_pairs([found]):
            label = "lives_in" if (head.type, tail.type) == ("PER", "LOC") else "no_relation"
            spans = {"head": [head.start, head.end], "tail": [tail.start, tail.end]}
            records.append({"text": text, **spans, "label": label})
    return records


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("triples")
    tiny_checkpoint(d / "base", "bert")
    rows = ner_sentences(240)
    (d / "train.conll").write_text("".join("".join(f"{w} {t}\n" for w, t in zip(*r, strict=True)) + "\n" for r in rows))
    write_jsonl(d / "train.jsonl", relation_records(240))
    finetune(d / "base", d / "train.conll", None, d / "ner", "ner", ft=FinetuneConfig(epochs=6, **FAST))
    finetune(d / "base", d / "train.jsonl", None, d / "rel", "relation", ft=FinetuneConfig(epochs=12, **FAST))
    (d / "text.txt").write_text(TEXT)
    return d


def test_bio_spans_become_mentions_with_characters():
    sentence = "Bob  saw Paris city and Rome"
    found = bio_mentions(sentence, 3, ["B-PER", "O", "B-LOC", "I-LOC", "O", "I-LOC"])
    assert [(m.text, m.type) for m in found] == [("Bob", "PER"), ("Paris city", "LOC"), ("Rome", "LOC")]
    assert {m.sentence for m in found} == {3}
    (rome,) = bio_mentions("Bob's home: Rome.", 0, ["O", "O", "O", "B-LOC", "O"])  # punctuation is a word of its own
    assert (rome.text, rome.start, rome.end) == ("Rome", 12, 16)
    assert all(sentence[m.start : m.end] == m.text for m in found)


def test_mentions_merge_by_folded_name_and_type():
    tags = ["B-PER", "I-PER", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    found = bio_mentions("Alice  Smith met alice smith and ALICE SMITH", 0, tags)
    nodes, edges = build_graph(found, [])
    assert node_key("Alice  Smith", "PER") == ("alice smith", "PER")
    names = [(n["name"], n["type"], n["mentions"]) for n in nodes]
    assert names == [("Alice  Smith", "PER", 2), ("ALICE SMITH", "LOC", 1)]  # one type kept apart from another
    assert edges == []


def test_extracts_the_planted_triples_scoring_pairs_in_batches(models):
    ner, relation = load_finetuned(models / "ner"), load_finetuned(models / "rel")
    calls = []
    relation[0].register_forward_hook(lambda *_: calls.append(1))
    triples = extract_triples(*ner, *relation, [TEXT], batch_size=4, device="cpu", min_confidence=0.5)
    assert {(t["head"], t["relation"], t["tail"]) for t in triples} == EXPECTED
    sentences = split_sentences(TEXT)
    pairs = mention_pairs(find_mentions(*ner, sentences, 4, "cpu"))
    assert len(pairs) >= 6 and len(calls) == math.ceil(len(pairs) / 4)  # batches of pairs, not one pass per pair
    for t in triples:
        assert t["text"] == sentences[t["sentence"]] and 0.5 <= t["confidence"] <= 1
        assert t["text"][slice(*t["head_span"])] == t["head"] and t["text"][slice(*t["tail_span"])] == t["tail"]
    assert extract_triples(*ner, *relation, [TEXT], 4, "cpu", min_confidence=1.0) == []


def test_a_pair_too_far_apart_for_the_relation_model_is_left_out(models):
    model, tokenizer, task = load_finetuned(models / "rel")
    task.max_seq_len = 10  # [CLS] + 8 + [SEP]: "[E1] paris city [/E1] [E2] bob [/E2]" fits, alice and paris do not
    sentence = "Alice " + "the film " * 6 + "Paris city Bob"
    found = bio_mentions(sentence, 0, ["B-PER", *["O"] * 12, "B-LOC", "I-LOC", "B-PER"])
    pairs, features = encode_pairs(mention_pairs([found]), [sentence], model, tokenizer, task)
    assert [(h.text, t.text) for h, t in pairs] == [("Paris city", "Bob"), ("Bob", "Paris city")]
    assert len(features) == 2 and all(len(f["input_ids"]) <= 10 for f in features)


def test_bad_options_are_refused(models):
    ner, relation = load_finetuned(models / "ner"), load_finetuned(models / "rel")
    with pytest.raises(LmforgeError, match="--min-confidence must be a probability"):
        extract_triples(*ner, *relation, [TEXT], 4, "cpu", min_confidence=1.5)
    with pytest.raises(LmforgeError, match="--relation model is a ner model"):
        extract_triples(*ner, *ner, [TEXT], 4, "cpu")


def test_cli_writes_triples_nodes_edges_and_pictures(models, tmp_path, capsys):
    out = tmp_path / "kg"
    argv = ["extract-triples", "--ner", str(models / "ner"), "--relation", str(models / "rel")]
    argv += ["--input", str(models / "text.txt"), "--out", str(out), "--batch-size", "3", "--device", "cpu"]
    assert main(argv) == 0
    assert "3 triples" in capsys.readouterr().out
    triples = [json.loads(line) for line in (out / "triples.jsonl").read_text().splitlines()]
    assert {(t["head"], t["relation"], t["tail"]) for t in triples} == EXPECTED
    nodes = list(csv.DictReader((out / "nodes.csv").open()))
    alice = [n for n in nodes if n["name"].casefold() == "alice"]
    assert len(alice) == 1 and alice[0]["type"] == "PER" and alice[0]["mentions"] == "2"  # Alice and alice
    edges = list(csv.DictReader((out / "edges.csv").open()))
    names = {n["id"]: n["name"] for n in nodes}
    assert {(names[e["source"]], e["relation"], names[e["target"]]) for e in edges} == {
        ("Alice", "lives_in", "Paris city"), ("Alice", "lives_in", "Oslo city"), ("Bob", "lives_in", "Rome city")
    }  # fmt: skip
    assert all(e["count"] == "1" and 0.5 <= float(e["confidence"]) <= 1 for e in edges)
    assert (out / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "graph.svg").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_finetuned", "is not fine-tuned"),
        ("swapped", "is a relation model: give a checkpoint fine-tuned with --task ner"),
        ("ner_as_relation", "is a ner model: give a checkpoint fine-tuned with --task relation"),
        ("empty", "is empty"),
        ("missing", "not found"),
        ("out_is_file", "is a file"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(models, tmp_path, capsys, case, message):
    ner, rel, text, out = models / "ner", models / "rel", models / "text.txt", tmp_path / "kg"
    if case == "not_finetuned":
        rel = models / "base"
    elif case == "swapped":
        ner, rel = rel, ner
    elif case == "ner_as_relation":
        rel = ner
    elif case == "empty":
        text = tmp_path / "empty.txt"
        text.write_text(" \n")
    elif case == "missing":
        text = tmp_path / "nope.txt"
    else:
        out.write_text("keep")
    argv = ["extract-triples", "--ner", str(ner), "--relation", str(rel), "--input", str(text), "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (out.read_text() == "keep") if case == "out_is_file" else not out.exists()
