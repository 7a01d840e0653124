"""The server's Prometheus metrics, in the text exposition format (version 0.0.4): requests by path and status,
tokens in and out, queue depth and batch size, and histograms of request latency and time to first token."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds


class Histogram:
    def __init__(self):
        self.counts, self.total, self.n = [0] * len(BUCKETS), 0.0, 0

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(BUCKETS, seconds)
        if i < len(BUCKETS):
            self.counts[i] += 1
        self.total += seconds
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip(BUCKETS, self.counts, strict=True):
            cumulative += count
            out.append(f'{name}_bucket{{{labels}le="{bound}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels}le="+Inf"}} {self.n}')
        brace = f"{{{labels.rstrip(',')}}}" if labels else ""
        return [*out, f"{name}_sum{brace} {self.total}", f"{name}_count{brace} {self.n}"]


class Metrics:
    """Counters the routes update (from the event loop) and render() reads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.first_token = Histogram()
        self.prompt_tokens = self.completion_tokens = 0

    def request(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, Histogram()).observe(seconds)

    def tokens(self, prompt: int, completion: int, first_token_s: list[float | None]) -> None:
        with self.lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            for seconds in first_token_s:
                if seconds is not None:
                    self.first_token.observe(seconds)

    def render(self, queue_depth: int, batch_size: int) -> str:
        with self.lock:
            lines = _header("lmforge_requests_total", "counter", "HTTP requests answered, by path and status code.")
            lines += [
                f'lmforge_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())
            ]
            for name, kind, text, value in (
                ("lmforge_prompt_tokens_total", "counter", "Prompt tokens read.", self.prompt_tokens),
                ("lmforge_generated_tokens_total", "counter", "Tokens generated.", self.completion_tokens),
                ("lmforge_queue_depth", "gauge", "Requests waiting for a row of the batch.", queue_depth),
                ("lmforge_batch_size", "gauge", "Requests decoding together now.", batch_size),
            ):
                lines += [*_header(name, kind, text), f"{name} {value}"]
            lines += _header("lmforge_request_seconds", "histogram", "Request latency, by path.")
            for path, histogram in sorted(self.latency.items()):
                lines += histogram.lines("lmforge_request_seconds", f'path="{path}",')
            name = "lmforge_time_to_first_token_seconds"
            lines += [*_header(name, "histogram", "From submission to the first token."), *self.first_token.lines(name)]
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
