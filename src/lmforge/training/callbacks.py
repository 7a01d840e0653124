"""What the loop calls beside the step: the metrics log (JSON lines, trimmed on resume) and stop requests (SIGINT,
SIGTERM)."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path


def _record_step(line: str) -> float:
    """A record's step; a line torn by a crash mid-write reads as infinitely late, so a resume drops it."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Metrics as JSON lines in OUT/metrics.jsonl; on resume, records after the resumed step are dropped."""

    def __init__(self, path: Path, keep_until: int, enabled: bool = True):
        self.path, self.enabled = path, enabled  # only one rank writes
        if not enabled:
            return
        kept = []
        if keep_until and path.is_file():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _record_step(line) <= keep_until]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class StopRequest:
    """SIGINT/SIGTERM ask the loop to save a checkpoint and stop at the end of the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        """A second signal stops at once, unless within 2 s: under torchrun a Ctrl-C arrives twice, relayed too."""
        now = time.monotonic()
        if self.requested and now - self.since > 2.0:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.since = True, now

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
