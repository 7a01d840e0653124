"""Knowledge-graph triples from text: a fine-tuned NER model finds the entity mentions of each sentence, a fine-tuned
relation model scores every ordered pair of them in batches, and the kept (head, relation, tail) triples become a
graph whose nodes merge mentions of one name and type."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.atomic import check_output_dir, write_text_atomic
from lmforge.checkpoint.loader import load_finetuned
from lmforge.config import TaskConfig
from lmforge.data.documents import read_documents, split_sentences
from lmforge.data.labelled import Example
from lmforge.data.records import check_data_file
from lmforge.errors import LmforgeError
from lmforge.inference.predict import check_batch_size, pad_id_of, predict, predict_features
from lmforge.tasks import get_task
from lmforge.tasks.relation import RelationExample
from lmforge.tokenizer import Tokenizer

NO_RELATION = {"no_relation", "norelation", "no-relation", "none", "other", "o", "na", "n/a", "null"}
WORD = re.compile(r"\w+(?:[-'’]\w+)*|\S")
FILES = ("triples.jsonl", "nodes.csv", "edges.csv", "graph.png", "graph.svg")


@dataclass
class Mention:
    """An entity mention: its sentence, its [start, end) characters in that sentence, its words and its type."""

    sentence: int
    start: int
    end: int
    text: str
    type: str

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


def words_of(sentence: str) -> list[tuple[int, int]]:
    """Each word's [start, end) characters: runs of letters and digits (with inner hyphens and apostrophes), and each
    other non-space character alone, as CoNLL data splits punctuation from the words."""
    return [m.span() for m in WORD.finditer(sentence)]


def bio_mentions(sentence: str, index: int, tags: list[str]) -> list[Mention]:
    """IOB2 tags of the sentence's words -> mentions; an I- tag that does not continue its type starts one."""
    spans: list[list] = []  # [start, end, type]
    previous = "O"
    for (start, end), tag in zip(words_of(sentence), tags, strict=True):
        kind = tag[2:]
        if tag == "O":
            pass
        elif tag.startswith("I-") and previous != "O" and previous[2:] == kind:
            spans[-1][1] = end
        else:
            spans.append([start, end, kind])
        previous = tag
    return [Mention(index, s, e, sentence[s:e], kind) for s, e, kind in spans]


def find_mentions(
    model: torch.nn.Module, tokenizer: Tokenizer, task: TaskConfig, sentences: list[str], batch_size: int, device
) -> list[list[Mention]]:
    """The mentions of each sentence, from the NER model's tag per word."""
    examples = [Example(n, [s[a:b] for a, b in words_of(s)]) for n, s in enumerate(sentences, start=1)]
    records = predict(model, tokenizer, task, examples, batch_size, device)
    return [bio_mentions(s, i, r["tags"]) for i, (s, r) in enumerate(zip(sentences, records, strict=True))]


def mention_pairs(mentions: list[list[Mention]]) -> list[tuple[Mention, Mention]]:
    """Every ordered pair of two different mentions of one sentence."""
    return [(h, t) for found in mentions for h in found for t in found if h is not t]


def encode_pairs(
    pairs: list[tuple[Mention, Mention]], sentences: list[str], model, tokenizer: Tokenizer, task: TaskConfig
) -> tuple[list[tuple[Mention, Mention]], list[dict]]:
    """The relation task's features for the pairs; a pair whose entities and the words between them do not fit in
    the model's max_seq_len is left out (the task refuses it) rather than stopping the whole extraction."""
    kind, family = get_task(task.task), model.backbone.family
    examples = [RelationExample(h.sentence, sentences[h.sentence], h.span, t.span) for h, t in pairs]
    try:
        return pairs, kind.encode(examples, tokenizer, family, task, False)
    except LmforgeError:
        kept, features = [], []
        for pair, example in zip(pairs, examples, strict=True):
            try:
                features += kind.encode([example], tokenizer, family, task, False)
                kept.append(pair)
            except LmforgeError:
                continue
        return kept, features


def check_min_confidence(min_confidence: float) -> None:
    if not 0 <= min_confidence <= 1:
        raise LmforgeError(f"--min-confidence must be a probability from 0 to 1, not {min_confidence}")


def _extract(
    ner: tuple, relation: tuple, texts: list[str], batch_size: int, device, min_confidence: float
) -> tuple[list[str], list[Mention], list[dict]]:
    """The sentences, every mention found, and the kept triples."""
    check_batch_size(batch_size)
    check_min_confidence(min_confidence)
    sentences = [s for text in texts for s in split_sentences(text)]
    mentions = find_mentions(*ner, sentences, batch_size, device)
    model, tokenizer, task = relation
    pairs, features = encode_pairs(mention_pairs(mentions), sentences, model, tokenizer, task)
    probs = predict_features(model, features, pad_id_of(tokenizer), batch_size, device, get_task(task.task))
    triples = []
    for (head, tail), p in zip(pairs, probs, strict=True):
        best = int(p.argmax())
        label, confidence = task.labels[best], float(p[best])
        if label.casefold() in NO_RELATION or confidence < min_confidence:
            continue
        triples.append({
            "head": head.text, "head_type": head.type, "relation": label, "tail": tail.text, "tail_type": tail.type,
            "confidence": round(confidence, 6), "sentence": head.sentence, "head_span": list(head.span),
            "tail_span": list(tail.span), "text": sentences[head.sentence],
        })  # fmt: skip
    return sentences, [m for found in mentions for m in found], triples


def extract_triples(
    ner_model: torch.nn.Module,
    ner_tokenizer: Tokenizer,
    ner_task: TaskConfig,
    relation_model: torch.nn.Module,
    relation_tokenizer: Tokenizer,
    relation_task: TaskConfig,
    texts: list[str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    min_confidence: float = 0.5,
) -> list[dict]:
    """(head, relation, tail) triples of the texts' sentences, with the confidence, the sentence's index and text, and
    each entity's type and characters in that sentence; "no relation" labels and low confidences left out."""
    check_tasks(ner_task, relation_task)
    ner = (ner_model, ner_tokenizer, ner_task)
    relation = (relation_model, relation_tokenizer, relation_task)
    return _extract(ner, relation, texts, batch_size, device, min_confidence)[2]


def check_tasks(ner_task: TaskConfig, relation_task: TaskConfig, ner: str = "", relation: str = "") -> None:
    """An NER model given for relations (or the reverse) would fail deep in encoding, or find nothing."""
    checks = (("--ner", ner, ner_task, "ner"), ("--relation", relation, relation_task, "relation"))
    for flag, path, task, want in checks:
        if task.task != want:
            raise LmforgeError(
                f"{flag} {path or 'model'} is a {task.task} model: give a checkpoint fine-tuned with --task {want}"
            )


def node_key(mention_text: str, kind: str) -> tuple[str, str]:
    """Mentions of one entity: the same words up to case and spacing, and the same type."""
    return " ".join(mention_text.split()).casefold(), kind


def build_graph(mentions: list[Mention], triples: list[dict]) -> tuple[list[dict], list[dict]]:
    """Nodes (id, name, type, mentions) in order of first mention, and edges (source, target, relation, confidence:
    the highest of its triples, count) from the triples."""
    nodes: dict[tuple[str, str], dict] = {}
    for m in mentions:
        node = nodes.setdefault(node_key(m.text, m.type), {"id": len(nodes), "name": m.text, "type": m.type})
        node["mentions"] = node.get("mentions", 0) + 1
    edges: dict[tuple[int, int, str], dict] = {}
    for t in triples:
        source = nodes[node_key(t["head"], t["head_type"])]["id"]
        target = nodes[node_key(t["tail"], t["tail_type"])]["id"]
        edge = edges.setdefault(
            (source, target, t["relation"]),
            {"source": source, "target": target, "relation": t["relation"], "confidence": 0.0, "count": 0},
        )
        edge["confidence"] = max(edge["confidence"], t["confidence"])
        edge["count"] += 1
    return list(nodes.values()), list(edges.values())


def csv_text(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _layout(graph) -> dict:
    """Each weakly connected component laid out on its own (spring layout, seed 0, scaled to a unit circle) in a cell
    of a grid, largest first: one layout of the whole graph lets small components overlap or collapse."""
    import networkx as nx

    parts = sorted(nx.weakly_connected_components(graph), key=lambda part: (-len(part), min(part)))
    columns = math.ceil(math.sqrt(len(parts)))
    positions = {}
    for i, part in enumerate(parts):
        local = nx.spring_layout(graph.subgraph(part), seed=0) if len(part) > 1 else {min(part): (0.0, 0.0)}
        row, column = divmod(i, columns)
        positions |= {node: (2.8 * column + x, -2.8 * row + y) for node, (x, y) in local.items()}
    return positions


def draw_graph(nodes: list[dict], edges: list[dict], png_path: Path, svg_path: Path) -> None:
    """The graph as a picture, nodes coloured by type and edges labelled by relation; PNG and SVG whole or absent.
    When there are edges, only the nodes they join are drawn (a title counts the others, which nodes.csv lists): a
    crowd of lone mentions would push the graph itself into a corner."""
    import networkx as nx

    from lmforge.plots import pyplot

    joined = {e["source"] for e in edges} | {e["target"] for e in edges}
    alone = len(nodes) - len(joined) if edges else 0
    nodes = [n for n in nodes if n["id"] in joined] if edges else nodes
    graph = nx.DiGraph()
    graph.add_nodes_from(n["id"] for n in nodes)
    graph.add_edges_from((e["source"], e["target"]) for e in edges)
    types = sorted({n["type"] for n in nodes})
    palette = pyplot().get_cmap("tab10")
    size = min(6 + 0.3 * len(nodes), 20)
    fig, ax = pyplot().subplots(figsize=(size, size * 0.75), dpi=100)
    positions = _layout(graph)
    colours = [palette(types.index(n["type"]) % 10) for n in nodes]
    nx.draw_networkx_nodes(graph, positions, ax=ax, node_color=colours, node_size=900, alpha=0.85)
    nx.draw_networkx_labels(graph, positions, {n["id"]: n["name"] for n in nodes}, ax=ax, font_size=9)
    curved = "arc3,rad=0.12"  # A -> B and B -> A drawn apart
    nx.draw_networkx_edges(graph, positions, ax=ax, arrowsize=15, node_size=900, connectionstyle=curved)
    labels: dict[tuple[int, int], str] = {}
    for e in edges:
        key = (e["source"], e["target"])
        labels[key] = "\n".join(filter(None, [labels.get(key), e["relation"]]))
    nx.draw_networkx_edge_labels(graph, positions, labels, ax=ax, font_size=8, connectionstyle=curved)
    for kind in types:
        ax.scatter([], [], color=palette(types.index(kind) % 10), label=kind)
    if types:
        ax.legend(loc="best", fontsize=8)
    if alone:
        ax.set_title(f"{alone} entities without a triple are not drawn (see nodes.csv)", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    for path in (png_path, svg_path):
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}{path.suffix}")
        fig.savefig(tmp)
        os.replace(tmp, path)
    pyplot().close(fig)


@dataclass
class Extraction:
    """What extract_triples_files wrote, for the one-line summary."""

    out: Path
    sentences: int
    mentions: int
    triples: int
    nodes: int
    edges: int

    def summary(self) -> str:
        return (
            f"{self.triples} triples ({self.nodes} nodes, {self.edges} edges) from {self.mentions} entity mentions "
            f"in {self.sentences} sentences, written to {self.out}"
        )


def extract_triples_files(
    ner_checkpoint: str | Path,
    relation_checkpoint: str | Path,
    input: str | Path,
    out: str | Path,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    min_confidence: float = 0.5,
) -> Extraction:
    """Reads a text file (or .jsonl of {"text"} records), extracts its triples and writes FILES into `out`; the paths,
    the options, the text and both models' tasks are checked before anything is written."""
    input = Path(input)
    check_data_file(input)
    out = check_output_dir(out, {"--input": input})
    check_batch_size(batch_size)
    check_min_confidence(min_confidence)
    texts = read_documents(input)
    if not any(split_sentences(t) for t in texts):
        raise LmforgeError(f"--input {input} holds no text: give a file with sentences to read")
    ner = load_finetuned(ner_checkpoint, device)
    relation = load_finetuned(relation_checkpoint, device)
    check_tasks(ner[2], relation[2], str(ner_checkpoint), str(relation_checkpoint))
    sentences, mentions, triples = _extract(ner, relation, texts, batch_size, device, min_confidence)
    nodes, edges = build_graph(mentions, triples)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "triples.jsonl", "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in triples))
    write_text_atomic(out / "nodes.csv", csv_text(nodes, ["id", "name", "type", "mentions"]))
    write_text_atomic(out / "edges.csv", csv_text(edges, ["source", "target", "relation", "confidence", "count"]))
    draw_graph(nodes, edges, out / "graph.png", out / "graph.svg")
    return Extraction(out, len(sentences), len(mentions), len(triples), len(nodes), len(edges))
