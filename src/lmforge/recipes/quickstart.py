"""The main job on an embedded default: train a small character-level GPT on text every Python install has."""

from __future__ import annotations

import ast
import math
import sys
import sysconfig
from pathlib import Path

from lmforge.atomic import check_output_dir
from lmforge.checkpoint.loader import load_model
from lmforge.config import load_config
from lmforge.generation.text import generate_text
from lmforge.recipes.pretrain import train

PROMPTS = ("Return the ", "This module ", "If the ")


def stdlib_corpus(max_bytes: int = 3_000_000) -> str:
    """The docstrings of Python's standard library: English prose that exists wherever Python does."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py")) + sorted(root.glob("*/*.py"))
    pieces, size = [], 0
    for path in files:
        if {"test", "tests", "idlelib", "site-packages"} & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80 and doc.isascii():
                    pieces.append(doc.strip())
                    size += len(doc) + 2
        if size >= max_bytes:
            break
    return "\n\n".join(pieces) + "\n"


def quickstart(data: str | None = None, out: str = "runs/quickstart", max_steps: int = 2500, seed: int = 1337) -> Path:
    """Trains char-small for about two minutes on 2 CPU cores, saves it and prints samples; returns the checkpoint.
    The settings and out are checked before the corpus is built."""
    out_dir = check_output_dir(out, {"--data": data})
    corpus = Path(data) if data is not None else out_dir / "corpus.txt"
    cfg = load_config(
        "char-small",
        [f"data.path={corpus}", f"train.out={out_dir / 'model'}", f"train.max_steps={max_steps}", f"train.seed={seed}"],
    )
    if data is None and not corpus.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        print("building a corpus from the Python standard library's docstrings ...", file=sys.stderr)
        tmp = corpus.with_name(".tmp-corpus.txt")
        tmp.write_text(stdlib_corpus(), encoding="utf-8")
        tmp.replace(corpus)
    result = train(cfg, resume=True)
    model, tokenizer, _ = load_model(result.checkpoint)
    print(f"\ncheckpoint: {result.checkpoint}")
    print(f"loss curve: {result.checkpoint.parent / 'loss.png'}")
    val = f"{result.val_loss:.3f}" if result.val_loss is not None else "n/a"
    ran = not math.isnan(result.train_loss)  # nan: the run was complete already, and no step ran now
    loss = f"final train loss {result.train_loss:.3f}" if ran else "already trained (no step ran now)"
    print(f"{loss}, validation loss {val}, {result.wall_s:.0f} s\n")
    for i, prompt in enumerate(PROMPTS):
        text = generate_text(model, tokenizer, prompt, 240, temperature=0.8, top_k=40, seed=seed + i)
        print(f"--- sample {i + 1} ---\n{prompt}{text}\n")
    print(f'next: lmforge generate {result.checkpoint} --prompt "The " --max-new-tokens 300')
    return result.checkpoint
