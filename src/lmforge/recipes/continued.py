"""Continued (domain-adaptive) pretraining: a run that starts from a pretrained model's weights and tokenizer instead
of from scratch (Gururangan et al., 2020, "Don't Stop Pretraining"), optionally with domain tokens added to its
vocabulary. The architecture is the checkpoint's; the config gives the data and the optimization."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lmforge.checkpoint.loader import load, trainable
from lmforge.config import RunConfig
from lmforge.data.records import read_utf8
from lmforge.errors import LmforgeError
from lmforge.models import MODELS
from lmforge.tokenizer import Tokenizer
from lmforge.training.loop import log


def read_added_tokens(path: str | Path) -> list[str]:
    """One token a line, blank lines and repeats left out; a missing or empty file is a user mistake."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"--add-tokens {path} not found: give a text file with one new token a line")
    tokens = list(dict.fromkeys(line.strip() for line in read_utf8(path).splitlines() if line.strip()))
    if not tokens:
        raise LmforgeError(f"--add-tokens {path} holds no token: give one new token a line")
    return tokens


@torch.no_grad()
def add_domain_tokens(model: torch.nn.Module, tokenizer: Tokenizer, tokens: list[str]) -> list[int]:
    """Adds the tokens the tokenizer lacks, each a single token from now on, and starts each one's embedding at the
    mean of the embeddings of the pieces the tokenizer split it into before: a known meaning rather than noise.
    Returns the new ids."""
    new = [t for t in tokens if tokenizer.backend.token_to_id(t) is None]
    if not new:
        return []
    pieces = {t: tokenizer.encode(t) for t in new}
    tokenizer.backend.add_tokens(new)
    ids = [tokenizer.backend.token_to_id(t) for t in new]
    model.add_token_rows(ids)
    table = model.input_embeddings.weight
    for token, i in zip(new, ids, strict=True):
        if pieces[token]:
            table[i] = table[pieces[token]].mean(0)
    return ids


def start_from(cfg: RunConfig, device: torch.device) -> tuple[RunConfig, torch.nn.Module, Tokenizer]:
    """cfg with the architecture of cfg.train.init, a model holding its weights (an encoder gets an MLM head if it
    had none, and keeps a sentence head only if it had one), and its tokenizer, with train.add_tokens added."""
    loaded = trainable(load(cfg.train.init, device), "continued pretraining")
    if loaded.task is not None:
        raise LmforgeError(
            f"--init {cfg.train.init} is fine-tuned for {loaded.task.task}: continue pretraining from a pretrained "
            "checkpoint (its backbone before fine-tuning)"
        )
    family = loaded.config.family
    if family != cfg.family:
        raise LmforgeError(
            f"--init {cfg.train.init} holds a {family} model but the config is a {cfg.family} one: give a {family} "
            "config (its data and train sections are used; the architecture is the checkpoint's)"
        )
    weights = loaded.model.state_dict()
    model_cfg = dataclasses.replace(loaded.config.model)
    if family == "bert":
        has_sentence_head = any(k.startswith("sentence_head.") for k in weights)
        sentence = model_cfg.sentence_objective if has_sentence_head else "none"
        model_cfg = dataclasses.replace(model_cfg, mlm_head=True, sentence_objective=sentence)
    torch.manual_seed(cfg.train.seed)  # a new head's initial weights, the same in every run with this seed
    model = MODELS[family](model_cfg)
    expected = model.state_dict().keys()
    missing = [k for k in expected if k not in weights and not k.startswith(("mlm_head.", "pooler.", "sentence_head."))]
    if missing:
        raise LmforgeError(f"--init {cfg.train.init}: its weights do not fit a {family} model (no {missing[0]})")
    model.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=False)
    if family == "bert" and not any(k.startswith("mlm_head.") for k in weights):
        log(
            f"{cfg.train.init} has no MLM head: a new one starts from random weights, so the first steps mostly train "
            "it (docs/domain-adaptation.md measures what that costs)"
        )
    tokenizer = loaded.tokenizer
    if cfg.train.add_tokens:
        add_domain_tokens(model, tokenizer, read_added_tokens(cfg.train.add_tokens))
    return dataclasses.replace(cfg, model=model.cfg), model.to(device), tokenizer
