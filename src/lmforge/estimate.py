"""Before a run: its parameters, FLOPs, memory, time, energy and CO2, from the config and a hardware profile.

The parameters are the model's own (built on the meta device: shapes, no memory); the FLOPs per token are the
training objective's own count; memory, time and energy follow the formulas in docs/estimate.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lmforge.config import DataConfig, RunConfig
from lmforge.errors import LmforgeError
from lmforge.hardware import Hardware
from lmforge.models import on_meta

BYTES = {"fp32": 4, "bf16": 2}
# per parameter, in fp32 under bf16 autocast too (the weights stay fp32 and autocast casts them per matmul)
WEIGHT_BYTES, GRAD_BYTES, ADAMW_BYTES = 4, 4, 8


def model_config_of(path: str | Path) -> RunConfig:
    """The run config of a checkpoint (a step directory or a run's OUT) or a Hugging Face directory, read without
    loading its weights."""
    import yaml

    from lmforge.checkpoint.files import CONFIG, EXTRA_SECTIONS, find_latest
    from lmforge.checkpoint.hub import resolve

    path = resolve(path)
    if not path.is_dir():
        raise LmforgeError(f"--model {path}: not a directory; give a checkpoint or a Hugging Face model directory")
    if not (path / CONFIG).is_file() and not (path / "config.json").is_file():
        path = find_latest(path) or path
    if (path / CONFIG).is_file():
        raw = yaml.safe_load((path / CONFIG).read_text(encoding="utf-8"))
        for k in EXTRA_SECTIONS:
            if isinstance(raw, dict):
                raw.pop(k, None)
        return RunConfig.from_dict(raw, where=str(path / CONFIG))
    return _hf_config(path)


CHAR_VOCAB = 256  # a character tokenizer's vocabulary is its data's characters: English text has about 100


def planned_config(cfg: RunConfig) -> RunConfig:
    """A config as its run will build the model: the vocabulary is the tokenizer's, which training makes from the data
    (data.vocab_size for a BPE, WordPiece or Unigram tokenizer it trains, CHAR_VOCAB at most for characters), not the
    model section's default (50,257 for a GPT, 30,522 for a BERT)."""
    tokenizer = cfg.data.tokenizer
    if tokenizer in ("bpe", "wordpiece", "unigram"):
        vocab = cfg.data.vocab_size
    elif tokenizer == "char":
        vocab = CHAR_VOCAB
    else:
        return cfg  # a tokenizer file: its vocabulary is the model config's to state
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def _hf_config(path: Path) -> RunConfig:
    import json

    from lmforge.interop.hf_config import heads_of, model_config, read_config, read_weights
    from lmforge.interop.hf_t5 import t5_config
    from lmforge.interop.hf_xlnet import xlnet_config

    raw = json.loads((path / "config.json").read_text(encoding="utf-8")) if (path / "config.json").is_file() else {}
    if isinstance(raw, dict) and raw.get("model_type") == "t5":
        return RunConfig("t5", t5_config(raw), DataConfig(tokenizer="bpe"))
    if isinstance(raw, dict) and raw.get("model_type") == "xlnet":
        return RunConfig("xlnet", xlnet_config(raw), DataConfig(tokenizer="unigram"))
    family, raw = read_config(path)
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
    else:
        keys = set(read_weights(path))
    _, mlm, sentence = heads_of(family, keys)
    cfg = model_config(family, raw, mlm, sentence)
    gpt = family.model_type == "gpt2"
    return RunConfig("gpt" if gpt else "bert", cfg, DataConfig(tokenizer="char" if gpt else "bpe"))


def flops_per_token(cfg: RunConfig, model: torch.nn.Module, finetune: bool = False) -> float:
    """Training FLOPs per token, as the run's objective counts them (its throughput and MFU use the same). Fine-tuning
    a GPT or an encoder runs its stack without the LM head: 6 x the blocks' parameters as applied (a shared ALBERT
    block n_layer times) plus attention's 12 n_layer d_model T; a T5 fine-tunes text to text as Seq2Seq counts it."""
    from lmforge.objectives.families import Seq2Seq, objective_for

    if finetune and cfg.family != "t5":
        stack = model if cfg.family == "xlnet" else model.decoder if cfg.family == "gpt" else model.encoder
        block = sum(p.numel() for p in stack.blocks[0].parameters())
        m = cfg.model
        return 6 * m.n_layer * block + 12 * m.n_layer * m.d_model * cfg.train.seq_len
    objective = Seq2Seq() if finetune else objective_for(cfg)
    if isinstance(objective, Seq2Seq):  # the mean pair lengths come from the data; assume pairs of seq_len
        objective.lengths = (float(cfg.train.seq_len), float(cfg.train.seq_len))
    return objective.flops_per_token(model, cfg)


def _layers(cfg: RunConfig) -> tuple[int, int]:
    """(layers that hold activations in training, decoder layers that keep a KV cache in serving)."""
    m = cfg.model
    if cfg.family == "t5":
        return m.n_layer + m.n_decoder_layer, m.n_decoder_layer
    return m.n_layer, m.n_layer if cfg.family == "gpt" else 0


def _lengths(cfg: RunConfig, seq_len: int, finetune: bool = False) -> tuple[int, int, float]:
    """(source length, target length, tokens the LM head predicts per sequence) of a training sequence. Fine-tuning
    a GPT or an encoder predicts with a small task head (no LM head); a T5 fine-tunes text to text."""
    if finetune:
        return (seq_len, seq_len, seq_len) if cfg.family == "t5" else (seq_len, 0, 0)
    if cfg.family == "bert":
        return seq_len, 0, cfg.data.mlm_probability * seq_len
    if cfg.family == "t5" and cfg.data.source is None:  # span corruption: a raw span of text becomes both
        from lmforge.objectives.span_corruption import corrupted_lengths, raw_length

        target = corrupted_lengths(raw_length(seq_len))[1]
        return seq_len, target, target
    if cfg.family == "xlnet":  # permutation LM: the query stream and the LM head run on the predicted tokens only
        from lmforge.objectives.permutation import num_predict

        return seq_len, 0, num_predict(seq_len, cfg.model.predict_fraction_k)
    return seq_len, (seq_len if cfg.family == "t5" else 0), seq_len


def _block_bytes(m, value: int, tokens: int, attended: int, cross_attended: int = 0) -> float:
    """What one block keeps for backward over `tokens` query tokens, as lmforge's blocks keep it (measured with
    training.memory.TensorPeak): the inputs of its norms and linear layers and of the activation, q, k, v and the
    attention output, 8 d + 2 d_ff values per token (a cross-attention block 7 d more). Fused attention keeps no
    attention matrix, but the CPU's has no dropout: with dropout the probabilities, their mask and the dropped copy
    stay, about 16 bytes per head and attended position, and every dropout keeps a 1-byte mask."""
    d, cross = m.d_model, cross_attended > 0
    values = 8 * d + 2 * m.d_ff + (7 * d if cross else 0)
    dropout = 0.0
    if m.dropout > 0:
        dropout = 2 * d + 16 * m.n_head * attended + ((d + 16 * m.n_head * cross_attended) if cross else 0)
    return tokens * (values * value + dropout)


def activation_bytes(
    cfg: RunConfig, batch: int, seq_len: int, precision: str, checkpointing: bool, finetune: bool = False
) -> float:
    """The activations of a training step at its peak: what the blocks keep for backward (_block_bytes), what the
    LM head keeps (its fused loss keeps about half the logits' fp32 bytes, over the predicted tokens only), and the
    largest transient of backward: the loss's at its start (a chunk's logits and their gradient in fp32, 2 x 4 bytes
    per predicted token and vocabulary entry), or one block's gradients, about as large as what the block keeps.
    With checkpointing each layer keeps only its input, and one layer is recomputed at a time. Sequences are taken
    as full (seq_len tokens); a batch of shorter ones holds less. Within 25% of the peak measured by
    training.memory.TensorPeak for every shipped config (tests/test_estimate.py)."""
    m = cfg.model
    value = BYTES[precision]
    source, target, predicted = _lengths(cfg, seq_len, finetune)
    if cfg.family == "t5":
        encoder = _block_bytes(m, value, batch * source, source)
        decoder = _block_bytes(m, value, batch * target, target, source)
        blocks = [(m.n_layer, encoder, batch * source), (m.n_decoder_layer, decoder, batch * target)]
    elif cfg.family == "xlnet":  # the content stream on every token, the query stream on the predicted ones; each
        # builds its scores itself (positions over 2T distances, the shifted bias, the probabilities): 4 per key
        tokens = batch * (source + predicted)
        both = _block_bytes(m, value, tokens, source) + tokens * 4 * value * m.n_head * source
        blocks = [(m.n_layer, both, tokens)]
    else:
        blocks = [(m.n_layer, _block_bytes(m, value, batch * source, source), batch * source)]
    head = 2 * batch * predicted * m.vocab_size
    transient = max(2 * batch * predicted * m.vocab_size * 4, max(b for _, b, _ in blocks))
    if checkpointing:
        kept = sum(n * tokens * m.d_model * value for n, _, tokens in blocks) + max(b for _, b, _ in blocks)
        return kept + head + transient
    return sum(n * b for n, b, _ in blocks) + head + transient


def _kv_cache_bytes(cfg: RunConfig, batch: int, seq_len: int, precision: str) -> float:
    m = cfg.model
    _, decoder_layers = _layers(cfg)
    inner = m.n_head * m.d_kv if cfg.family == "t5" else m.d_model
    return 2 * decoder_layers * inner * batch * seq_len * BYTES[precision]


def _cost(flops: float, hw: Hardware, precision: str, devices: int, utilization: float, grid: float, least=0.0):
    """Seconds at utilization of the devices' peak (or `least`, when memory bandwidth bounds it); kWh at their board
    power; kg CO2 at the grid's intensity."""
    seconds = max(flops / (hw.peak_flops(precision) * utilization * devices), least)
    kwh = seconds / 3600 * hw.power_w * devices / 1000
    return {"flops": flops, "seconds": seconds, "kwh": kwh, "co2_kg": kwh * grid}


def estimate(
    cfg: RunConfig,
    tokens: int | None = None,
    batch: int | None = None,
    seq_len: int | None = None,
    precision: str = "fp32",
    hardware: Hardware | None = None,
    devices: int = 1,
    utilization: float | None = None,
    grid_intensity: float = 0.4,
    serve_tokens: int = 0,
    finetune: bool = False,
) -> dict:
    """Parameters, FLOPs, memory, time, energy and CO2 of training cfg's model on `tokens` tokens (default: the
    config's max_steps x batch x seq_len), or of fine-tuning it on a task (`finetune`), and of serving `serve_tokens`
    more."""
    from lmforge.hardware import this_machine

    if precision not in BYTES:
        raise LmforgeError(f"precision {precision!r}: give fp32 or bf16")
    for name, value in (("devices", devices), ("batch", batch), ("seq_len", seq_len), ("tokens", tokens)):
        if value is not None and value < 1:
            raise LmforgeError(f"--{name.replace('_', '-')} = {value} is out of range: must be at least 1")
    if grid_intensity < 0 or serve_tokens < 0:
        raise LmforgeError("--grid-intensity and --serve-tokens must be >= 0")
    hw = hardware or this_machine()
    utilization = hw.utilization if utilization is None else utilization
    if not 0 < utilization <= 1:
        raise LmforgeError(f"--utilization = {utilization} is out of range: a share of peak in (0, 1], e.g. 0.4")
    seq_len = seq_len or cfg.train.seq_len
    if batch is None and cfg.train.batch_tokens and cfg.data.source is not None:
        batch = max(1, cfg.train.batch_tokens // (2 * seq_len))  # pairs of seq_len tokens a side in batch_tokens
    train = dataclasses.replace(cfg.train, batch_size=batch or cfg.train.batch_size, seq_len=seq_len)
    cfg = RunConfig(cfg.family, cfg.model, cfg.data, train)
    b, t = train.batch_size, train.seq_len
    tokens = tokens or train.max_steps * b * t

    model = on_meta(cfg.family, cfg.model)
    n = model.num_parameters()
    train_per_token = flops_per_token(cfg, model, finetune)
    infer_per_token = train_per_token / 3  # forward only: 2N + attention's 4 * n_layer * d_model * T

    states = {"weights": WEIGHT_BYTES * n, "gradients": GRAD_BYTES * n, "optimizer": ADAMW_BYTES * n}
    fixed = sum(states.values())
    per_device_batch = -(-b // devices)
    memory = {**states}
    for ckpt, suffix in ((False, ""), (True, "_checkpointed")):
        memory["activations" + suffix] = activation_bytes(cfg, b, t, precision, ckpt, finetune)
        act = activation_bytes(cfg, per_device_batch, t, precision, ckpt, finetune)
        memory["ddp_per_device" + suffix] = fixed + act
        memory["fsdp_per_device" + suffix] = fixed / devices + act
    serve_memory = BYTES[precision] * n + _kv_cache_bytes(cfg, b, t, precision)
    # decoding reads every weight once per step of `batch` tokens on each device: bandwidth bounds it from below
    serve_floor = serve_tokens / (b * devices) * BYTES[precision] * n / (hw.bandwidth_gbs * 1e9)

    run = dict(tokens=tokens, batch=b, seq_len=t, precision=precision, devices=devices, utilization=utilization)
    run["kind"] = "fine-tuning" if finetune else "pretraining"
    return {
        "model": {"family": cfg.family, "parameters": n},
        "run": {**run, "grid_intensity": grid_intensity},
        "hardware": dataclasses.asdict(hw),
        "flops_per_token": {"train": train_per_token, "inference": infer_per_token},
        "memory_bytes": memory,
        "fits": memory["fsdp_per_device_checkpointed"] <= hw.memory_gb * 1e9,
        "train": _cost(train_per_token * tokens, hw, precision, devices, utilization, grid_intensity),
        "serve": {
            "tokens": serve_tokens,
            "memory_bytes": serve_memory,
            "bandwidth_bound_seconds": serve_floor,
            **_cost(infer_per_token * serve_tokens, hw, precision, devices, utilization, grid_intensity, serve_floor),
        },
    }


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _duration(seconds: float) -> str:
    for span, name in ((86400 * 365, "years"), (86400, "days"), (3600, "hours"), (60, "minutes")):
        if seconds >= span:
            return f"{seconds / span:.3g} {name}"
    return f"{seconds:.3g} s"


def format_estimate(e: dict) -> str:
    """The estimate as an aligned two-column table."""
    r, hw, m, f = e["run"], e["hardware"], e["memory_bytes"], e["flops_per_token"]
    n, d = e["model"]["parameters"], r["devices"]
    where = f"{d} x {hw['name']}" if d > 1 else hw["name"]
    rows = [
        ("model", f"{e['model']['family']}, {n:,} parameters ({_si(n)})"),
        ("hardware", f"{where}: {hw[r['precision'] + '_tflops']:.3g} TFLOP/s {r['precision']} peak, "
                     f"{hw['memory_gb']:.3g} GB, {hw['power_w']:.3g} W; utilization {r['utilization']:.2g}"),
        ("run", f"{r['kind']}, {_si(r['tokens'])} tokens, batch {r['batch']} x seq_len {r['seq_len']}, "
                f"{r['precision']}"),
        ("FLOPs per token", f"training {_si(f['train'])}, inference {_si(f['inference'])}"),
        ("training FLOPs", _si(e["train"]["flops"])),
        ("weights", _si(m["weights"], "B")),
        ("gradients", _si(m["gradients"], "B")),
        ("AdamW state", _si(m["optimizer"], "B")),
        ("activations", f"{_si(m['activations'], 'B')} ({_si(m['activations_checkpointed'], 'B')} checkpointed)"),
        (f"per device, DDP x{d}", f"{_si(m['ddp_per_device'], 'B')} ({_si(m['ddp_per_device_checkpointed'], 'B')} "
                                  "checkpointed)"),
        (f"per device, FSDP x{d}", f"{_si(m['fsdp_per_device'], 'B')} "
                                   f"({_si(m['fsdp_per_device_checkpointed'], 'B')} checkpointed)"),
        ("fits", "yes" if e["fits"] else f"no: more than {hw['memory_gb']:.3g} GB per device even sharded"),
        ("training time", _duration(e["train"]["seconds"])),
        ("training energy", f"{e['train']['kwh']:.3g} kWh, {e['train']['co2_kg']:.3g} kg CO2 "
                            f"(at {r['grid_intensity']:.3g} kg/kWh)"),
    ]  # fmt: skip
    s = e["serve"]
    if s["tokens"]:
        rows += [
            ("serving", f"{_si(s['tokens'])} tokens: {_si(s['flops'], 'FLOP')}, {_duration(s['seconds'])}, "
                        f"{s['kwh']:.3g} kWh, {s['co2_kg']:.3g} kg CO2; memory {_si(s['memory_bytes'], 'B')}"),
        ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
