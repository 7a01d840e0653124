"""Helpers shared by the benchmarks: timing, the machine's measured matmul peak, JSON output."""

from __future__ import annotations

import json
import sys
import time

import torch


def best_time(fn, reps: int) -> float:
    """The fastest of reps runs of fn, in seconds (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_flops(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a large fp32 matmul on this machine: the practical peak that MFU is measured against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_time(lambda: a @ b, reps)


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(record: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)
