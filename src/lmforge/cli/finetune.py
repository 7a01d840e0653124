"""Verbs of fine-tuned models: finetune, evaluate, predict, explain."""

from __future__ import annotations

import argparse

from lmforge.cli.flags import add_device_flag, add_dtype_flag, add_overrides_flag
from lmforge.errors import LmforgeError

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
    """The fine-tuning run: --config, then --set, then the flags."""
    from lmforge.config import load_finetune_config

    values = {key: getattr(args, flag) for flag, key in FINETUNE_FLAGS.items() if getattr(args, flag) is not None}
    if args.class_weights:
        values["finetune.class_weights"] = True
    if args.no_progress:
        values["finetune.progress"] = False
    return load_finetune_config(args.config, args.overrides, values)


def checked_batch_size(args: argparse.Namespace) -> int:
    """Before --nproc starts its workers: the config and the output directory checked once, the global batch."""
    from lmforge.atomic import check_output_dir

    ft = finetune_config(args).finetune
    if ft.out is not None:  # without one, run_finetune says what to give
        check_output_dir(ft.out, {"--model": ft.model, "--train": ft.train, "--eval": ft.eval})
    return ft.batch_size


def cmd_finetune(args: argparse.Namespace) -> None:
    from lmforge.recipes.finetune import run_finetune

    result = run_finetune(finetune_config(args), resume=args.resume)
    best = f", eval {result.metric} {result.report[result.metric]:.4f}" if result.report else ""
    print(f"saved {result.checkpoint} (step {result.step} of {result.steps}{best})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from lmforge.inference.evaluate import HEADLINE, evaluate_checkpoint, evaluate_seq2seq
    from lmforge.training.device import resolve_device

    device = resolve_device(args.device)
    if (args.source is None) != (args.target is None):
        raise LmforgeError("give both --source and --target (the language suffixes or columns of parallel data)")
    if args.source is not None:
        report, written = evaluate_seq2seq(
            args.checkpoint, args.data, args.source, args.target, args.out, args.num_beams, args.batch_size, device,
            args.dtype, args.compare, compile=args.compile,
        )  # fmt: skip
    else:
        report, written = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            args.out,
            args.batch_size,
            device,
            args.dtype,
            args.compare,
            compile=args.compile,
        )
    if "bleu" in report:  # an encoder-decoder's scores, on sacreBLEU's 0-100 scale
        print(", ".join(f"{name} {report[name]:.2f}" for name in ("bleu", "chrf", "rougeL")))
        print(report["bleu_signature"])
    else:
        print(", ".join(f"{name} {report[name]:.4f}" for name in HEADLINE if name in report))
    for other, scores in report.get("compare", {}).items():
        shown = [name for name in HEADLINE if name in scores]
        print(f"{other}: " + ", ".join(f"{name} {scores[name]:.4f}" for name in shown) + f" ({report['dtype']} above)")
    print("wrote " + ", ".join(map(str, written)))


def cmd_predict(args: argparse.Namespace) -> None:
    import json

    from lmforge.inference.predict import predict_file, predict_texts
    from lmforge.training.device import resolve_device

    device = resolve_device(args.device)
    if (args.input is None) == (not args.text) or (args.input is None) != (args.output is None):
        raise LmforgeError("give --text TEXT (repeatable), or --input FILE with --output FILE")
    if args.input:
        n = predict_file(
            args.checkpoint, args.input, args.output, args.batch_size, device, args.dtype, compile=args.compile
        )
        print(f"wrote {n} predictions to {args.output}")
        return
    records = predict_texts(
        args.checkpoint, args.text, args.text_pair, args.batch_size, device, args.dtype, compile=args.compile
    )
    for record in records:
        print(json.dumps(record, ensure_ascii=False))


def cmd_explain(args: argparse.Namespace) -> None:
    from lmforge.explain.attributions import explain_checkpoint
    from lmforge.training.device import resolve_device

    explanation = explain_checkpoint(
        args.checkpoint, args.text, args.out, args.target, args.text_pair, args.steps, args.position,
        resolve_device(args.device),
    )  # fmt: skip
    print("\n".join(explanation.summary()))


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("finetune", help="fine-tune a pretrained model on labelled data (classification, NER, ...)")
    p.add_argument("--config", help="a YAML file with the sections task and finetune (flags override it)")
    add_overrides_flag(p, "finetune.lr=3e-5")
    p.add_argument(
        "--task", help="classification (default), ner, relation, qa, seq2seq, summarization, or a registered task"
    )
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
    add_device_flag(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--nproc", type=int, help="fine-tune on N processes (DDP; GPUs or CPU) under torchrun")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_finetune, checked_batch_size=checked_batch_size)

    p = verbs.add_parser("evaluate", help="score a fine-tuned checkpoint on labelled data; write a report")
    p.add_argument("checkpoint", help="a fine-tuned checkpoint (OUT of lmforge finetune), or an encoder-decoder")
    p.add_argument(
        "--data", required=True,
        help="labelled data in the format fine-tuning read; for an encoder-decoder, parallel data: a directory of "
        "val.SOURCE and val.TARGET files, or a .tsv / .jsonl file (columns source and target unless named)",
    )  # fmt: skip
    p.add_argument("--source", help="encoder-decoder: the source side's suffix or column (e.g. de); BLEU, chrF, ROUGE")
    p.add_argument("--target", help="encoder-decoder: the target side's suffix or column (e.g. en)")
    p.add_argument("--num-beams", type=int, default=4, help="encoder-decoder: beam search with N beams (1 = greedy)")
    p.add_argument("--out", help="report directory (default: CHECKPOINT/eval-DATA)")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_flag(p, "auto")
    add_dtype_flag(p)
    p.add_argument(
        "--compare", choices=["fp32", "bf16", "int8"],
        help="score the model in this precision too and report both (e.g. --dtype int8 --compare fp32)",
    )  # fmt: skip
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
    add_device_flag(p, "auto")
    add_dtype_flag(p)
    p.set_defaults(fn=cmd_predict)

    p = verbs.add_parser("explain", help="why a fine-tuned classifier decided: token attributions and attention maps")
    p.add_argument("checkpoint", help="a checkpoint directory of a fine-tuned classifier")
    p.add_argument("--text", required=True, help="the text to classify and explain")
    p.add_argument("--text-pair", help="the second text of a sentence-pair task")
    p.add_argument("--target", help="the label to explain, by name or index (default: the predicted one)")
    p.add_argument("--position", type=int, help="token task: the token whose label to explain (default: the first)")
    p.add_argument("--steps", type=int, default=50, help="integration steps of integrated gradients")
    p.add_argument("--out", default="explain", help="directory for explain.html and the PNGs")
    add_device_flag(p, "auto")
    p.set_defaults(fn=cmd_explain)
