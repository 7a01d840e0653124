"""The lmforge clean verb (privacy-aware corpus cleaning)."""

from __future__ import annotations

import argparse


def cmd_clean(args: argparse.Namespace) -> None:
    from lmforge.data.cleaning import REPORT_JSON, clean_files

    report = clean_files(args.input, args.out, args.redact_pii, args.dedup, args.dedup_threshold, not args.no_progress)
    pii = sum((report["pii"] or {}).values())
    print(
        f"cleaned {report['documents_in']} -> {report['documents_out']} documents ({report['exact_duplicates']} exact, "
        f"{report['near_duplicates']} near duplicates removed; {pii} PII items redacted) into {args.out}; "
        f"report {REPORT_JSON} beside it"
    )


def add_dedup_flags(p: argparse.ArgumentParser) -> None:
    """--redact-pii, --dedup and --dedup-threshold, shared with `data prepare`."""
    p.add_argument("--redact-pii", action="store_true", help="replace e-mails, phones, IPs, cards, IBANs... by <TYPE>")
    p.add_argument("--dedup", choices=["none", "exact", "near"], default="none", help="remove duplicate documents")
    p.add_argument("--dedup-threshold", type=float, default=0.8, help="--dedup near: the Jaccard similarity, in (0, 1]")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py."""
    p = verbs.add_parser("clean", help="redact PII and remove duplicate documents from a corpus, without tokenizing")
    p.add_argument(
        "--input", nargs="+", required=True, metavar="FILE", help="text (blank-line documents), .jsonl, .csv"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the cleaned text, or JSON lines when it ends .jsonl")
    add_dedup_flags(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_clean)
