"""Verbs that train from scratch, and what they read: quickstart, train, pretrain, configs, data prepare."""

from __future__ import annotations

import argparse

from lmforge.cli.cleaning import add_dedup_flags
from lmforge.cli.flags import add_device_flag, add_overrides_flag
from lmforge.errors import LmforgeError


def add_training_flags(p: argparse.ArgumentParser, config_default: str | None = None) -> None:
    """The flags every training verb shares; each overrides the config."""
    p.add_argument(
        "--config",
        default=config_default,
        required=config_default is None,
        help="a shipped config name (see `lmforge configs`) or a YAML path",
    )
    add_overrides_flag(p, "train.lr=3e-4")
    p.add_argument("--data", help="a text file (prepared on the fly and cached) or a prepared directory")
    p.add_argument(
        "--source", help="parallel data: the source language (DIR/train.SOURCE) or column of a .tsv/.jsonl file"
    )
    p.add_argument("--target", help="parallel data: the target language or column (translation: source -> target)")
    p.add_argument(
        "--init", help="continue pretraining from this checkpoint, Hugging Face directory or package (its weights, "
        "tokenizer and architecture; the config gives data and training)",
    )  # fmt: skip
    p.add_argument(
        "--add-tokens", metavar="FILE", help="with --init: domain tokens (one a line) added to its vocabulary"
    )
    p.add_argument("--out", help="output directory for checkpoints, metrics and plots")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train for")
    p.add_argument("--save-every", type=int, help="save a checkpoint every N steps (the end always saves)")
    p.add_argument("--seed", type=int)
    add_device_flag(p)
    p.add_argument("--compile", action="store_true", help="compile the model with torch.compile")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")  # fmt: skip
    p.add_argument("--nproc", type=int, help="train on N processes (DDP; GPUs or CPU) by re-running under torchrun")


def training_config(args: argparse.Namespace):
    """The run config: --config, then --set, then the flags."""
    from lmforge.config import load_config

    flags = {
        "data.path": args.data, "data.source": args.source, "data.target": args.target, "train.out": args.out,
        "train.max_steps": args.max_steps, "train.init": args.init, "train.add_tokens": args.add_tokens,
        "train.save_every": args.save_every, "train.seed": args.seed, "train.device": args.device,
        "train.compile": True if args.compile else None, "train.progress": False if args.no_progress else None,
    }  # fmt: skip
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(args.config, overrides)


def checked_batch_size(args: argparse.Namespace) -> int:
    """Before --nproc starts its workers: the config and the output directory checked once, the global batch."""
    from lmforge.atomic import check_output_dir

    cfg = training_config(args)
    check_output_dir(cfg.train.out, {"--data": cfg.data.path})
    return cfg.train.batch_size


def _saved(result) -> str:
    val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    return f"saved {result.checkpoint} (step {result.step}, train loss {result.train_loss:.4f}{val})"


def cmd_train(args: argparse.Namespace) -> None:
    from lmforge.recipes.pretrain import train

    cfg = training_config(args)
    if cfg.family == "t5" and cfg.data.source is None:
        raise LmforgeError(
            "lmforge train with an encoder-decoder config trains on parallel data: give --source and --target (the "
            "languages of DIR/train.XX files, or the columns of a .tsv/.jsonl); span-corruption pretraining is "
            "lmforge pretrain"
        )
    cfg.require_family(("gpt", "t5"), "lmforge train", "pretrain an encoder config with lmforge pretrain")
    print(_saved(train(cfg, resume=args.resume)))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from lmforge.recipes.pretrain import train

    cfg = training_config(args)
    fix = "use bert-small, roberta-small, albert-small, t5-small or xlnet-small"
    cfg.require_family(("bert", "t5", "xlnet"), "lmforge pretrain", fix)
    result = train(cfg, resume=args.resume)
    print(_saved(result))
    if result.val_metrics:
        print("validation: " + ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in result.val_metrics.items()))


def cmd_quickstart(args: argparse.Namespace) -> None:
    from lmforge.recipes.quickstart import quickstart

    quickstart(args.data, args.out, args.max_steps, args.seed)


def cmd_configs(args: argparse.Namespace) -> None:
    from lmforge.config import shipped_configs

    for name, path in sorted(shipped_configs().items()):
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        print(f"{name:14s} {first}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from lmforge.data import prepare, prepare_documents

    build = prepare_documents if args.documents else prepare
    extra = {} if args.documents else {"on_bad_line": args.on_bad_line}
    extra.update(redact_pii=args.redact_pii, dedup=args.dedup, dedup_threshold=args.dedup_threshold)
    out = build(args.input, args.tokenizer, args.out, args.vocab_size, args.val_fraction, not args.no_progress,
                not args.cased, not args.cased, **extra)  # fmt: skip
    print(f"prepared {out}")


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("quickstart", help="train a small GPT for ~2 minutes on a built-in corpus and sample it")
    p.add_argument("--data", help="train on this text file instead of the built-in corpus")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--max-steps", type=int, default=2500)
    p.add_argument("--seed", type=int, default=1337)
    p.set_defaults(fn=cmd_quickstart)

    p = verbs.add_parser(
        "train", help="train a causal language model (GPT), or an encoder-decoder on parallel data, from a config"
    )
    add_training_flags(p)
    p.set_defaults(fn=cmd_train, checked_batch_size=checked_batch_size)

    p = verbs.add_parser(
        "pretrain",
        help="pretrain an encoder (BERT, RoBERTa, ALBERT: MLM, NSP/SOP), a T5 (span corruption) or an XLNet "
        "(permutation LM)",
    )
    add_training_flags(p)
    p.set_defaults(fn=cmd_pretrain, checked_batch_size=checked_batch_size)

    p = verbs.add_parser("configs", help="list the shipped configs")
    p.set_defaults(fn=cmd_configs)

    data = verbs.add_parser("data", help="data preparation").add_subparsers(dest="data_verb", required=True)
    p = data.add_parser("prepare", help="clean and tokenize text into memory-mapped train/val token files")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE")
    p.add_argument(
        "--tokenizer",
        default="char",
        help="char, bpe, wordpiece, unigram (trained on the input) or a tokenizer.json path",
    )
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size of a trained BPE or WordPiece")
    p.add_argument("--documents", action="store_true", help="keep documents and sentences (for an encoder)")
    p.add_argument("--cased", action="store_true", help="WordPiece: keep case and accents")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--on-bad-line", choices=["error", "skip"], default="error", help="a malformed .jsonl/.csv record")
    add_dedup_flags(p)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_prepare)
