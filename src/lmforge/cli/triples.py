"""The lmforge extract-triples verb (knowledge-graph triples)."""

from __future__ import annotations

import argparse

from lmforge.cli.flags import add_device_flag


def cmd_extract_triples(args: argparse.Namespace) -> None:
    from lmforge.inference.triples import extract_triples_files
    from lmforge.training.device import resolve_device

    written = extract_triples_files(
        args.ner, args.relation, args.input, args.out, args.batch_size, resolve_device(args.device), args.min_confidence
    )
    print(written.summary())


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py; the verb is added here."""
    p = verbs.add_parser(
        "extract-triples", help="knowledge-graph triples from text with a fine-tuned NER and relation model"
    )
    p.add_argument("--ner", required=True, help="a checkpoint fine-tuned with --task ner (finds the entities)")
    p.add_argument("--relation", required=True, help="a checkpoint fine-tuned with --task relation (scores pairs)")
    p.add_argument("--input", required=True, help='a UTF-8 text file, or .jsonl of {"text": ...} records')
    p.add_argument("--out", required=True, help="directory for triples.jsonl, nodes.csv, edges.csv, graph.png/svg")
    p.add_argument("--batch-size", type=int, default=64, help="sentences or entity pairs per forward pass")
    p.add_argument(
        "--min-confidence", type=float, default=0.5, help="leave out triples whose relation has a lower probability"
    )
    add_device_flag(p, "auto")
    p.set_defaults(fn=cmd_extract_triples)
