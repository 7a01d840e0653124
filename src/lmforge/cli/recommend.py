"""The lmforge recommend verb: a model size, token budget and starting config for a budget of hours."""

from __future__ import annotations

import argparse


def cmd_recommend(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    import yaml

    from lmforge.atomic import check_output_file, write_text_atomic
    from lmforge.hardware import hardware_profile
    from lmforge.recommend import format_recommendation, recommend

    if args.out is not None:
        check_output_file(args.out)
    result = recommend(args.task, args.budget, hardware_profile(args.hardware), args.precision, args.devices,
                       args.utilization)  # fmt: skip
    if args.out is not None and "config" in result:
        header = f"# lmforge recommend --task {args.task} --budget {args.budget} --hardware {args.hardware}\n"
        write_text_atomic(Path(args.out), header + yaml.safe_dump(result["config"], sort_keys=False))
    print(json.dumps(result) if args.json else format_recommendation(result))
    if args.out is not None and "config" in result:
        verb = "train" if args.task in ("lm", "translation") else "pretrain"
        print(f"wrote {args.out}: train it with lmforge {verb} --config {args.out} --data ...")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("recommend", help="a model size, token budget and config for a budget of hours")
    p.add_argument("--task", required=True, help="lm, mlm, translation, span-corruption, or a fine-tuning task")
    p.add_argument("--budget", type=float, required=True, help="hours of training")
    p.add_argument("--hardware", default="this", help="this, A100, H100, H200, L4, RTX4090 or a YAML profile")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--utilization", type=float, help="share of peak reached (default: the profile's)")
    p.add_argument("--out", help="write the recommended config here (YAML)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(fn=cmd_recommend)
