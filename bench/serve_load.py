"""Load on `lmforge serve` against `transformers serve` (with and without --continuous-batching), same model directory.

Two random-weight GPT-2 models are written as Hugging Face directories in a temporary folder, without downloads: the
GPT-2 small shape (12 layers, 12 heads, d_model 768, vocab 50257, context 1024) with a byte-level BPE trained on
tinyshakespeare, and a char-small-shaped one (4 layers, 4 heads, d_model 128; GPT-2's learned positions, and a
256-token context so that a 96-character prompt and its tokens fit) with a character tokenizer. Each server in turn
(one at a time, so they do not share the cores) serves a directory on a free loopback port; after two warm-up
requests, up to --requests /v1/completions requests (every other one streamed; greedy, --max-tokens each) go out at
each concurrency of --levels, none started after --level-seconds (so that the serial peer stays bounded in time).
lmforge runs with --max-batch the largest level. Generated tokens are those the server reports in `usage`, or its
streamed chunks where it reports none (lmforge streams one chunk per token), so an early end-of-text costs a server
its tokens, not the comparison.

One JSON line per server, model and level (requests/s, generated tokens/s, p50/p99 latency and time to first token,
failed requests), then a summary: `ratio` is lmforge's generated tokens/s at concurrency 16 over the best peer's
there (GPT-2 small shape), `scaling_16` lmforge at 16 over lmforge at 1, `failed` the failures of every level of
every server; `same_text_*` the share of texts lmforge and transformers agree on at the lowest level. A server that
does not start or fails its warm-up is reported {"available": false}, not measured. On a shared machine give
--threads 1: a server with a thread on every core slows by far more than its share when another process runs.
With --dtype bf16 both serve bf16 weights (lmforge: bf16 linear layers, fp32 around them; transformers: the whole
model in bfloat16).
Usage: python bench/serve_load.py [--requests 64] [--max-tokens 16] [--levels 1,4,16,32] [--level-seconds 20]
                                  [--timeout 300] [--threads 0] [--models gpt2-small,char-small]
                                  [--servers lmforge,transformers,transformers-cb] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from common import emit, log

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
EOS = "<|endoftext|>"
MODELS = {  # name -> (n_layer, n_head, d_model, context, tokenizer)
    "gpt2-small": (12, 12, 768, 1024, "bpe"),
    "char-small": (4, 4, 128, 256, "char"),
}
GPT2_VOCAB = 50257
BUSY = "other processes share the cores; a server on every core then slows by far more than its share (--threads 1)"
START_TIMEOUT_S = 300  # loading GPT-2 small and importing FastAPI on a busy 2-core machine


def byte_bpe(text: str, vocab_size: int):
    """A GPT-2 style byte-level BPE trained on `text`, <|endoftext|> first; filled up to vocab_size with plain tokens
    where the text runs out of merges, so that every id the model can emit decodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    backend.train_from_iterator([text], trainer)
    missing = vocab_size - backend.get_vocab_size()
    backend.add_tokens([f"<|unused{i}|>" for i in range(missing)])
    return backend


def char_level(text: str):
    """One token per character (<|endoftext|> first), joined back without spaces: lmforge's char tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {EOS: 0, **{c: i + 1 for i, c in enumerate(sorted(set(text)))}}
    vocab["<unk>"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return backend


def write_model(out: Path, name: str, text: str, seed: int) -> Path:
    """A random-weight GPT2LMHeadModel of MODELS[name] and its tokenizer, saved as one Hugging Face directory."""
    from tokenizers import AddedToken
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    n_layer, n_head, d_model, context, kind = MODELS[name]
    backend = byte_bpe(text, GPT2_VOCAB) if kind == "bpe" else char_level(text)
    backend.add_special_tokens([AddedToken(EOS, special=True)])
    eos = backend.token_to_id(EOS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS,
                                        model_max_length=context)  # fmt: skip
    config = GPT2Config(vocab_size=backend.get_vocab_size(), n_positions=context, n_embd=d_model, n_layer=n_layer,
                        n_head=n_head, bos_token_id=eos, eos_token_id=eos)  # fmt: skip
    torch.manual_seed(seed)
    path = out / name
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompts(text: str, n: int = 8, chars: int = 96) -> list[str]:
    """n fixed passages of the text, each starting at a line."""
    out, step = [], len(text) // (n + 1)
    for i in range(1, n + 1):
        start = text.index("\n", i * step) + 1
        out.append(text[start : start + chars])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(command: list[str], port: int, log_path: Path, threads: int):
    """A server subprocess, up once /health answers 200; stopped with SIGTERM (SIGKILL after 30 s) on leaving."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"exited with code {process.returncode}: {tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer on /health after {START_TIMEOUT_S} s: {tail(log_path)}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tail(path: Path, lines: int = 5) -> str:
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


@dataclass
class Result:
    latency_s: float
    ttft_s: float | None  # streamed requests only
    tokens: int
    text: str
    error: str | None = None


async def complete(client: httpx.AsyncClient, body: dict) -> Result:
    """One /v1/completions request; an HTTP error, a missing finish_reason or an error chunk is a failure."""
    start = time.perf_counter()
    try:
        if not body["stream"]:
            response = await client.post("/v1/completions", json=body)
            if response.status_code != 200:
                return Result(time.perf_counter() - start, None, 0, "", f"HTTP {response.status_code}")
            data = response.json()
            choice = data["choices"][0]
            return Result(time.perf_counter() - start, None, data["usage"]["completion_tokens"], choice["text"],
                          None if choice.get("finish_reason") else "no finish_reason")  # fmt: skip
        ttft, chunks, usage, finish, pieces = None, 0, None, None, []
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return Result(time.perf_counter() - start, None, 0, "", f"HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[len("data: ") :])
                if "error" in data:
                    return Result(time.perf_counter() - start, ttft, 0, "", f"stream error: {data['error']}")
                usage = data.get("usage") or usage
                for choice in data.get("choices") or []:
                    ttft = time.perf_counter() - start if ttft is None else ttft
                    chunks += 1
                    pieces.append(choice.get("text") or "")
                    finish = choice.get("finish_reason") or finish
        tokens = usage["completion_tokens"] if usage else chunks  # lmforge streams one chunk per token
        error = None if finish else "stream ended without a finish_reason"
        return Result(time.perf_counter() - start, ttft, tokens, "".join(pieces), error)
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        return Result(time.perf_counter() - start, None, 0, "", f"{type(e).__name__}: {e}")


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank p-th percentile (0 < p <= 100)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Load:
    """What every level of one server sends: at most `requests` completions of `max_tokens` tokens; none started
    after `seconds`; a request with no answer for `timeout` seconds fails."""

    port: int
    model: str
    texts: list[str]
    requests: int
    max_tokens: int
    seconds: float
    timeout: float


async def level(load: Load, concurrency: int) -> tuple[dict, dict[int, str]]:
    """Completions (every other one streamed), `concurrency` in flight at a time: the level's figures, and the text
    of each request that succeeded by its index."""
    results: dict[int, Result] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    url = f"http://127.0.0.1:{load.port}"
    async with httpx.AsyncClient(base_url=url, timeout=load.timeout, limits=limits) as client:
        start = time.perf_counter()

        async def worker():
            nonlocal sent
            while sent < load.requests and time.perf_counter() - start < load.seconds:
                i, sent = sent, sent + 1
                body = {"model": load.model, "prompt": load.texts[i % len(load.texts)], "max_tokens": load.max_tokens,
                        "temperature": 0.0, "stream": i % 2 == 1}  # fmt: skip
                results[i] = await complete(client, body)

        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, load.requests))]
        _, late = await asyncio.wait(workers, timeout=load.seconds + load.timeout)
        for task in late:  # a request that was answered in parts for far too long: failed, as it is not in results
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        wall = time.perf_counter() - start

    ok = [r for r in results.values() if r.error is None]
    errors = sorted({r.error for r in results.values() if r.error is not None})
    if errors:
        log(f"  failures: {errors[:3]}")
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    record = {
        "concurrency": concurrency, "requests": sent, "not_sent": load.requests - sent, "ok": len(ok),
        "failed": sent - len(ok), "requests_per_s": len(ok) / wall, "tokens_per_s": tokens / wall,
        "generated_tokens": tokens, "latency_p50_s": percentile([r.latency_s for r in ok], 50),
        "latency_p99_s": percentile([r.latency_s for r in ok], 99),
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99), "wall_s": wall,
    }  # fmt: skip
    return record, {i: r.text for i, r in results.items() if r.error is None}


def servers(path: Path, port: int, name: str, max_batch: int, dtype: str) -> dict[str, tuple[list[str], str]]:
    """Each contender's command line and the model name its requests carry; both sides at the same precision."""
    bin_dir = Path(sys.executable).parent
    lmforge = [sys.executable, "-m", "lmforge", "serve", str(path), "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(max_batch), "--max-queue", "256", "--model-name", name,
               "--device", "cpu", "--dtype", dtype]  # fmt: skip
    peer = [str(bin_dir / "transformers"), "serve", str(path), "--host", "127.0.0.1", "--port", str(port),
            "--device", "cpu", "--dtype", {"fp32": "float32", "bf16": "bfloat16"}[dtype],
            "--log-level", "error"]  # fmt: skip
    return {
        "lmforge": (lmforge, name),
        "transformers": ([*peer, "--no-continuous-batching"], str(path)),
        "transformers-cb": ([*peer, "--continuous-batching"], str(path)),
    }


def run_server(label: str, command: list[str], load: Load, levels: list[int], logs: Path, threads: int):
    """The records of every level for one server, or None if it did not start or failed its warm-up requests."""
    log(f"{label}: starting ...")
    try:
        with server(command, load.port, logs / f"{label}.log", threads):
            warm_up = Load(**{**vars(load), "requests": 2, "seconds": START_TIMEOUT_S, "timeout": START_TIMEOUT_S})
            warm, _ = asyncio.run(level(warm_up, 1))  # one whole, one streamed: lazy set-up happens here
            if warm["ok"] < 2:
                log(f"{label}: warm-up failed: {tail(logs / f'{label}.log')}")
                return None
            records = []
            for concurrency in levels:
                record, answers = asyncio.run(level(load, concurrency))
                record["load_average"] = os.getloadavg()[0]
                if record["load_average"] > (os.cpu_count() or 1) and not threads:
                    log(f"  load average {record['load_average']:.1f}: {BUSY}")
                log(f"{label} c={concurrency}: {record['tokens_per_s']:.1f} tok/s, {record['requests_per_s']:.2f} "
                    f"req/s, p50 {record['latency_p50_s']} s, failed {record['failed']}")  # fmt: skip
                records.append((record, answers))
            return records
    except RuntimeError as e:
        log(f"{label}: unavailable: {e}")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level, at most")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens each request asks for (greedy)")
    parser.add_argument("--levels", default="1,4,16,32", help="concurrency levels, comma-separated")
    parser.add_argument("--level-seconds", type=float, default=20.0,
                        help="a level starts no request after this many seconds; those in flight finish")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may wait for its next bytes before it counts as failed")  # fmt: skip
    parser.add_argument("--models", default=",".join(MODELS), help=f"of {', '.join(MODELS)}")
    parser.add_argument("--servers", default="lmforge,transformers,transformers-cb")
    parser.add_argument("--threads", type=int, default=0,
                        help="OMP/MKL threads of every server (default: torch's choice, one per core)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="both servers' weights: lmforge serve --dtype, transformers serve --dtype")  # fmt: skip
    args = parser.parse_args()
    args.levels = sorted({int(c) for c in args.levels.split(",")})
    models, labels = args.models.split(","), args.servers.split(",")
    if min(args.requests, args.max_tokens, *args.levels) < 1 or min(args.level_seconds, args.timeout) <= 0:
        parser.error("--requests, --max-tokens, --levels, --level-seconds and --timeout must be positive")
    if set(models) - set(MODELS) or set(labels) - {"lmforge", "transformers", "transformers-cb"}:
        parser.error(f"--models among {', '.join(MODELS)}; --servers among lmforge, transformers, transformers-cb")
    at = 16 if 16 in args.levels else max(args.levels)
    text = DATA.read_text(encoding="utf-8")
    texts = prompts(text)
    log(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    summary: dict = {"ratio": None, "scaling_16": None, "failed": 0, "ratio_concurrency": at, "peer_unavailable": []}
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        for name in models:
            path = write_model(Path(tmp), name, text, args.seed)
            log(f"{name}: written to {path}")
            runs = {}
            for label in labels:
                port = free_port()
                command, model = servers(path, port, name, max(args.levels), args.dtype)[label]
                load = Load(port, model, texts, args.requests, args.max_tokens, args.level_seconds, args.timeout)
                runs[label] = run_server(label, command, load, args.levels, Path(tmp), args.threads)
                for record, _ in runs[label] or [({"available": False}, None)]:
                    emit({"model": name, "server": label, **record})
            summary.update(summarize(name, runs, at))
            summary["failed"] += sum(r["failed"] for records in runs.values() for r, _ in records or [])
            summary["peer_unavailable"] += [f"{name}/{label}" for label, records in runs.items() if records is None]
    summary["ratio"], summary["scaling_16"] = summary.get(f"ratio_{models[0]}"), summary.get(f"scaling_16_{models[0]}")
    summary["headline_model"], summary["dtype"] = models[0], args.dtype
    emit({"summary": True, **summary})


def summarize(name: str, runs: dict, at: int) -> dict:
    """One model's summary fields: lmforge's tokens/s at concurrency `at` over the best peer's, over its own at the
    lowest level, and how many texts lmforge and transformers agree on at the lowest level (greedy, same weights)."""
    tokens_per_s = {label: {r["concurrency"]: r["tokens_per_s"] for r, _ in records}
                    for label, records in runs.items() if records}  # fmt: skip
    ours = tokens_per_s.get("lmforge", {})
    peers = {label: levels[at] for label, levels in tokens_per_s.items() if label != "lmforge" and at in levels}
    best_peer = max(peers, key=peers.get) if peers else None
    out = {
        f"ratio_{name}": ours[at] / peers[best_peer] if at in ours and best_peer and peers[best_peer] else None,
        f"scaling_16_{name}": ours[at] / ours[min(ours)] if at in ours and ours[min(ours)] else None,
        f"lmforge_tokens_per_s_{name}": ours.get(at),
        f"peer_best_{name}": best_peer,
        f"peer_best_tokens_per_s_{name}": peers.get(best_peer),
    }
    if runs.get("lmforge") and runs.get("transformers"):
        a, b = runs["lmforge"][0][1], runs["transformers"][0][1]
        common = set(a) & set(b)
        out[f"same_text_{name}"] = sum(a[i] == b[i] for i in common) / len(common) if common else None
    return out


if __name__ == "__main__":
    main()
