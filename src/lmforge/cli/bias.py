"""The lmforge probe-bias verb (the bias probe)."""

from __future__ import annotations

import argparse

from lmforge.cli.flags import add_device_flag


def cmd_probe_bias(args: argparse.Namespace) -> None:
    from lmforge.atomic import check_output_dir
    from lmforge.checkpoint.loader import load
    from lmforge.inference.bias import (
        check_bootstrap,
        load_templates,
        probe_bias,
        probe_kind,
        shipped_templates,
        summary_line,
        write_bias_report,
    )
    from lmforge.training.device import resolve_device

    check_bootstrap(args.bootstrap)  # mistakes fail before the model loads
    shipped_templates(args.language)
    out = check_output_dir(args.out, {"--templates": args.templates})
    templates = load_templates(args.templates) if args.templates else None
    loaded = load(args.checkpoint, resolve_device(args.device))
    templates = templates or load_templates(args.language, probe_kind(loaded))
    report = probe_bias(loaded, templates, args.bootstrap, args.seed)
    write_bias_report(report, out)
    print(f"{summary_line(report)}; wrote {out}/report.json and report.html")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py."""
    p = verbs.add_parser(
        "probe-bias", help="compare a model's scores on template sentences that differ only in a group term"
    )
    p.add_argument("checkpoint", help="a masked LM, a causal LM or a fine-tuned classifier (lmforge or Hugging Face)")
    p.add_argument("--out", required=True, metavar="DIR", help="where report.json and report.html go")
    p.add_argument(
        "--templates",
        metavar="FILE.yaml",
        help="groups: {name: [terms]}, templates: [... {group} ... [MASK] ...], targets: [...] "
        "(default: the shipped templates of --language)",
    )
    p.add_argument("--language", default="en", help="the shipped templates to use: en or zh")
    p.add_argument("--bootstrap", type=int, default=1000, help="resampling rounds for the confidence interval")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    add_device_flag(p, "auto")
    p.set_defaults(fn=cmd_probe_bias)
