"""Greedy KV-cache decoding speed of lmforge's GPT against transformers' GPT2LMHeadModel, same weights, same process.

GPT-2 small shape (12 layers, 12 heads, d_model 768, vocab 50257, context 1024), random weights, fp32, CPU.
Prints progress on stderr and one JSON line on stdout. The bound is the time of one matrix-vector product over
every weight matrix (LM head included): fp32 decoding cannot read the weights faster than that. lmforge's greedy
decoding reads its LM head (a third of the bytes here) as an int8 screen and confirms the few rows left in fp32
(`lmforge.kernels.argmax`: the same tokens as the fp32 argmax), so its share of this bound can pass 100%. It is timed
with torch's x @ W.T (MKL) and with lmforge's `linear` (oneDNN on AMD CPUs, MKL for one row on Intel ones), and the
faster counts: on AMD, MKL runs a matrix-vector product on one thread and oneDNN on all of torch's threads. Each is
timed as new_tokens passes in a row, like the generation it bounds; every figure is the best of --reps rounds.

With --dtype int8 or bf16, lmforge runs its quantized linear layers (lmforge.kernels.quantize, as `--dtype` does on
every verb; int8 smoothed, as by default, with maxima measured on random ids) against transformers in fp32
(`ratio`) and, for int8, against transformers with torch.ao.quantization.quantize_dynamic (qint8 linears:
`ratio_quantized_peer`). GPT-2 keeps its projections in
transformers' Conv1D, which quantize_dynamic does not touch; the peer gets them as nn.Linear first, so that it is
quantized whole. The weights are random, so the logits are nearly flat and rounding changes which token wins
within a few steps: quality is measured on trained models (docs/quantization.md), not here. The bound is then the
measured memory bandwidth over the bytes each token reads (the quantized weights, the fp32 ones left, and the LM
head's int8 screen). lmforge's int8 layers run compiled (`--compile`, lmforge.kernels.compile_layers: each layer's
rounding and scaling fused around its product) unless --no-compile; the warm-up call compiles. bf16 runs eagerly
unless --compile: compiled, its products lose oneDNN's packed copy of the weights and run slower.
Usage: python bench/generate.py [--reps 5] [--new-tokens 128] [--quiet-wait 10] [--dtype fp32|int8|bf16]
       [--compile | --no-compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
from common import add_compile_flag, compiles
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.checkpoint import unique_state_dict
from lmforge.config import GPTConfig
from lmforge.hardware import best_time
from lmforge.interop.hf import FAMILIES, to_ours
from lmforge.kernels import apply_kernels
from lmforge.kernels.bf16 import Bf16Linear
from lmforge.kernels.calibration import built_in_texts, input_maxima
from lmforge.kernels.compiled import compile_layers
from lmforge.kernels.int8 import Int8Linear
from lmforge.kernels.linear import linear
from lmforge.kernels.quantize import Quantization, check_dtype, quantize_model
from lmforge.models.gpt import GPT

VOCAB, N_LAYER, N_HEAD, D_MODEL, CONTEXT = 50257, 12, 12, 768, 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_models(seed: int) -> tuple[GPT, GPT2LMHeadModel]:
    """A randomly initialized GPT-2 and an lmforge GPT holding the same weights, with lmforge's kernels applied as
    the model loader applies them for every inference verb."""
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=D_MODEL, n_layer=N_LAYER, n_head=N_HEAD)
    ).eval()
    cfg = GPTConfig(vocab_size=VOCAB, n_layer=N_LAYER, n_head=N_HEAD, d_model=D_MODEL, max_seq_len=CONTEXT)
    ours = GPT(cfg).eval()
    ours.load_state_dict(
        to_ours(FAMILIES["gpt2"], hf.state_dict(), unique_state_dict(ours), head_model=True), strict=False
    )
    return apply_kernels(ours), hf


def cpu_busy() -> tuple[int, int]:
    """(busy, total) CPU ticks since boot, from /proc/stat (Linux)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy


def wait_quiet(seconds: float) -> None:
    """Waits up to `seconds` for a half second in which other processes keep the CPUs under 10% busy."""
    if seconds <= 0 or not os.path.exists("/proc/stat"):
        return
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        busy0, total0 = cpu_busy()
        time.sleep(0.5)
        busy1, total1 = cpu_busy()
        if busy1 - busy0 < 0.1 * max(total1 - total0, 1):
            return


def race(runs: dict, reps: int, quiet_wait: float) -> dict:
    """Best seconds and last output of each callable: one warm-up each, then `reps` rounds taking turns, each call
    after waiting for a quiet CPU, so that load from other processes falls on every contender alike."""
    best = {name: float("inf") for name in runs}
    outputs = {name: fn() for name, fn in runs.items()}
    for _ in range(reps):
        for name, fn in runs.items():
            wait_quiet(quiet_wait)
            start = time.perf_counter()
            outputs[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], outputs[name]) for name in runs}


def weight_passes(model: GPT, product, n: int):
    """n passes of x @ W.T, x of shape (1, in), over every weight matrix (LM head included), as many as the tokens
    generated, so that the bound and the generation are timed over the same stretch of a shared machine."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(1, w.size(1)) for w in weights]

    def passes():
        with torch.inference_mode():
            for _ in range(n):
                for x, w in zip(xs, weights, strict=True):
                    product(x, w)

    return passes


def generators(ours: GPT, hf: GPT2LMHeadModel, prompt: torch.Tensor, new_tokens: int) -> dict:
    def run_ours():
        return ours.generate(prompt, new_tokens, greedy=True)

    def run_hf():
        with torch.inference_mode():
            return hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                use_cache=True,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=hf.config.eos_token_id,
            )

    return {"lmforge": run_ours, "transformers": run_hf}


def linear_peer(hf: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """hf with each Conv1D (y = x W + b, W stored (in, out)) as the nn.Linear that computes the same, so that
    quantize_dynamic, which quantizes nn.Linear only, reaches every projection."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(hf.named_modules()):
        if isinstance(module, Conv1D):
            layer = torch.nn.Linear(*module.weight.shape)
            layer.weight.data, layer.bias.data = module.weight.data.t().contiguous(), module.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(hf.get_submodule(parent), child, layer)
    return hf


def memory_bandwidth(reps: int = 5) -> float:
    """Bytes per second that a sum over 512 MB (far beyond any cache) reads, the best of reps."""
    x = torch.ones(2**27)
    return x.numel() * 4 / best_time(x.sum, reps)


def bytes_per_token(model: GPT) -> int:
    """What greedy decoding of one token reads: every linear layer's weights as stored (int8 with their scales,
    bf16 or fp32), and an fp32 LM head tied to the embedding through its int8 screen (a byte a weight; the few rows
    confirmed in fp32 are left out)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            total += module.weight.numel() + 4 * module.weight_scale.numel()
        elif isinstance(module, Bf16Linear | torch.nn.Linear):
            w = module.weight
            total += w.numel() if name == "lm_head" else w.numel() * w.element_size()
    return total


def quantized(args: argparse.Namespace) -> None:
    """The --dtype int8 / bf16 run: lmforge quantized against transformers fp32 and (int8) quantize_dynamic."""
    check_dtype(args.dtype)
    ours, hf = build_models(args.seed)
    input_max = None
    if args.dtype == "int8":  # smoothed as `--dtype int8` smooths by default (random ids: this model reads no text)
        ids = torch.randint(VOCAB - 1, (len(built_in_texts()), 24), generator=torch.Generator().manual_seed(args.seed))
        input_max = input_maxima(ours, ids.tolist())
    quantize_model(ours, Quantization(args.dtype), input_max=input_max)
    if compiles(args):
        compile_layers(ours)
    n = args.new_tokens
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(VOCAB - 1, (1, args.prompt_len), generator=g)
    prompts8 = torch.randint(VOCAB - 1, (8, args.prompt_len), generator=g)
    peers = {"transformers": hf}
    if args.dtype == "int8":
        peer = linear_peer(copy.deepcopy(hf))
        peers["quantize_dynamic"] = torch.ao.quantization.quantize_dynamic(peer, {torch.nn.Linear}, torch.qint8)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; lmforge in {args.dtype}")
    record: dict = {"dtype": args.dtype, "compiled": compiles(args)}
    for batch, prompts in ((1, prompt), (8, prompts8)):
        runs = {"lmforge": lambda p=prompts: ours.generate(p, n, greedy=True)}
        for name, model in peers.items():
            runs[name] = generators(ours, model, prompts, n)["transformers"]
        times = race(runs, args.reps, args.quiet_wait)
        tps = {name: batch * n / t for name, (t, _) in times.items()}
        prefix = "" if batch == 1 else "batch8_"
        record |= {f"{prefix}lmforge_tokens_per_s": tps["lmforge"], f"{prefix}transformers_tokens_per_s":
                   tps["transformers"], f"{prefix}ratio": tps["lmforge"] / tps["transformers"]}  # fmt: skip
        if "quantize_dynamic" in tps:
            record[f"{prefix}quantized_peer_tokens_per_s"] = tps["quantize_dynamic"]
            record[f"{prefix}ratio_quantized_peer"] = tps["lmforge"] / tps["quantize_dynamic"]
        log(f"batch {batch}: " + ", ".join(f"{k} {v:.1f} tokens/s" for k, v in tps.items()))
    bandwidth, per_token = memory_bandwidth(), bytes_per_token(ours)
    bound = bandwidth / per_token
    share = 100 * record["lmforge_tokens_per_s"] / bound
    record |= {"bytes_per_token": per_token, "bandwidth_gb_s": round(bandwidth / 1e9, 1),
               "bound_tokens_per_s": bound, "pct_of_bound": round(share, 1)}  # fmt: skip
    log(f"bound: {bandwidth / 1e9:.1f} GB/s over {per_token / 1e6:.1f} MB a token = {bound:.1f} tokens/s")
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per side; the best counts")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quiet-wait", type=float, default=10.0, help="seconds to wait for an idle CPU before each timed run"
    )
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "int8", "bf16"], help="lmforge's linear layers")
    add_compile_flag(parser)
    args = parser.parse_args()
    if args.dtype != "fp32":
        quantized(args)
        return

    ours, hf = build_models(args.seed)
    n = args.new_tokens
    g = torch.Generator().manual_seed(args.seed)
    # token ids below the end-of-text id: transformers' min_new_tokens forbids that id, lmforge does not
    prompt = torch.randint(VOCAB - 1, (1, args.prompt_len), generator=g)
    prompts8 = torch.randint(VOCAB - 1, (8, args.prompt_len), generator=g)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {ours.num_parameters() / 1e6:.1f}M parameters")

    # The bound: the faster of torch's x @ W.T (MKL) and lmforge's linear on the same weights.
    runs = generators(ours, hf, prompt, n)
    runs["x @ W.T"] = weight_passes(ours, lambda x, w: x @ w.T, n)
    runs["lmforge linear"] = weight_passes(ours, linear, n)
    times = race(runs, args.reps, args.quiet_wait)
    (t_ours, out_ours), (t_hf, out_hf) = times["lmforge"], times["transformers"]
    same = torch.equal(out_ours, out_hf)
    bound_matmul, bound_linear = n / times["x @ W.T"][0], n / times["lmforge linear"][0]
    bound = max(bound_matmul, bound_linear)
    ours_tps, hf_tps = n / t_ours, n / t_hf
    log(
        f"bound, one matrix-vector pass over the weights: x @ W.T {bound_matmul:.1f}, lmforge linear {bound_linear:.1f}"
    )
    log(f"batch 1: lmforge {ours_tps:.1f} tokens/s, transformers {hf_tps:.1f} tokens/s, same tokens: {same}")

    times = race(generators(ours, hf, prompts8, n), args.reps, args.quiet_wait)
    (t8_ours, out8_ours), (t8_hf, out8_hf) = times["lmforge"], times["transformers"]
    same8 = torch.equal(out8_ours, out8_hf)
    ours8, hf8 = 8 * n / t8_ours, 8 * n / t8_hf
    log(f"batch 8: lmforge {ours8:.1f} tokens/s, transformers {hf8:.1f} tokens/s, same tokens: {same8}")
    log(
        f"load average {os.getloadavg()[0]:.1f} (above ~0.5, other processes share the cores and the figures are noisy)"
    )

    print(
        json.dumps(
            {
                "lmforge_tokens_per_s": round(ours_tps, 2),
                "transformers_tokens_per_s": round(hf_tps, 2),
                "ratio": round(ours_tps / hf_tps, 3),
                "bound_tokens_per_s": round(bound, 2),
                "bound_matmul_tokens_per_s": round(bound_matmul, 2),
                "bound_linear_tokens_per_s": round(bound_linear, 2),
                "pct_of_bound": round(100 * ours_tps / bound, 1),
                "batch8_lmforge_tokens_per_s": round(ours8, 2),
                "batch8_transformers_tokens_per_s": round(hf8, 2),
                "batch8_ratio": round(ours8 / hf8, 3),
                "same_tokens": same and same8,
            }
        )
    )


if __name__ == "__main__":
    main()
