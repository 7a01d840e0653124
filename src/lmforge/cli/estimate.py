"""The lmforge estimate verb: parameters, FLOPs, memory, time, energy and CO2 of a run before it starts."""

from __future__ import annotations

import argparse

from lmforge.cli.flags import add_overrides_flag
from lmforge.errors import LmforgeError


def cmd_estimate(args: argparse.Namespace) -> None:
    import json

    from lmforge.config import load_config
    from lmforge.estimate import estimate, format_estimate, model_config_of, planned_config
    from lmforge.hardware import hardware_profile

    if (args.config is None) == (args.model is None):
        raise LmforgeError("lmforge estimate needs one of --config (a config name or YAML) or --model (a directory)")
    if args.model is not None and args.overrides:
        raise LmforgeError("--set overrides a --config; a --model's architecture is fixed by its directory")
    cfg = planned_config(load_config(args.config, args.overrides)) if args.config else model_config_of(args.model)
    result = estimate(
        cfg, args.tokens, args.batch, args.seq_len, args.precision, hardware_profile(args.hardware), args.devices,
        args.utilization, args.grid_intensity, args.serve_tokens, args.finetune,
    )  # fmt: skip
    print(json.dumps(result) if args.json else format_estimate(result))


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    """Registered by cli/main.py."""
    p = verbs.add_parser("estimate", help="parameters, FLOPs, memory, time, energy and CO2 of a run, before it starts")
    p.add_argument("--config", help="a shipped config name (see `lmforge configs`) or a YAML path")
    add_overrides_flag(p, "model.n_layer=12")
    p.add_argument("--model", metavar="PATH", help="a checkpoint or Hugging Face directory instead of --config")
    p.add_argument("--tokens", type=int, help="tokens to train on (default: max_steps x batch x seq_len)")
    p.add_argument("--batch", type=int, help="sequences per optimizer step, all devices (default: the config's)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the config's)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument(
        "--hardware", default="this", help="this (measured here), A100, H100, H200, L4, RTX4090, or a YAML file"
    )
    p.add_argument("--devices", type=int, default=1, help="devices training together (DDP or FSDP)")
    p.add_argument(
        "--utilization", type=float, help="the share of peak FLOP/s reached (default: 0.4 on GPUs, calibrated on CPU)"
    )
    p.add_argument("--grid-intensity", type=float, default=0.4, help="kg CO2 per kWh of the grid (default 0.4)")
    p.add_argument("--serve-tokens", type=int, default=0, help="also estimate serving (generating) this many tokens")
    p.add_argument(
        "--finetune", action="store_true",
        help="fine-tuning on a task (a small task head, no LM head; a T5 text to text) instead of pretraining",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.set_defaults(fn=cmd_estimate)
