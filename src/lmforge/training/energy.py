"""Energy a run has used so far: measured by `codecarbon` when it is installed (the `green` extra), estimated from
the device's power otherwise (lmforge.hardware.device_power); each log record says which.

codecarbon reads RAPL counters or the GPU's own meter where the machine exposes them and falls back to its CPU
model table where it does not; lmforge asks it for energy only, and turns energy into CO2 at the run's own grid
intensity, so the CO2 figure of a measured run and of an estimate mean the same thing. codecarbon takes about 0.3 s
of CPU to start once told the CPU's model (_tell_cpu_model), so it starts in a thread beside the first steps, which
are estimated until it runs. LMFORGE_ENERGY=estimate in the environment skips it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch

from lmforge.hardware import device_power
from lmforge.kernels.cpu import cpuinfo
from lmforge.training import distributed

MEASURE_EVERY_S = 5.0  # codecarbon's reading is a few system calls; the figure is logged, not steered by


class EnergyMeter:
    """Started with the training loop (a context manager, so codecarbon's threads stop with it); kwh() is the energy
    used since, in kWh, by all ranks: estimated until codecarbon has started, measured from then on."""

    def __init__(self, device: torch.device):
        self.start = time.perf_counter()
        self.power_w, self.source = device_power(device)
        self.tracker, self.tracked_from = None, self.start
        self.last_read, self.last_kwh = 0.0, 0.0
        self.starting: threading.Thread | None = None
        if os.environ.get("LMFORGE_ENERGY", "auto") != "estimate" and distributed.world_size() == 1:
            self.starting = threading.Thread(target=self._start, args=(device,), name="lmforge-codecarbon", daemon=True)
            self.starting.start()

    def _start(self, device: torch.device) -> None:
        tracker = _tracker(device)
        if tracker is not None:
            self.tracked_from = time.perf_counter()
            self.tracker = tracker  # set last: kwh() reads the tracker once it runs

    def _estimate(self, seconds: float) -> float:
        return self.power_w * seconds * distributed.world_size() / 3.6e6

    def kwh(self) -> float:
        now, tracker = time.perf_counter(), self.tracker
        if tracker is None:
            return self._estimate(now - self.start)
        self.source = "measured by codecarbon"
        if now - self.last_read >= MEASURE_EVERY_S:
            tracker.flush()
            measured = float(tracker._total_energy.kWh)
            self.last_read, self.last_kwh = now, self._estimate(self.tracked_from - self.start) + measured
        return self.last_kwh

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc) -> None:
        if self.starting is not None:
            self.starting.join()
        if self.tracker is not None:
            self.tracker.stop()
            self.tracker = None


def _tracker(device: torch.device):
    """An offline codecarbon tracker (no network, no files) for this process, or None when codecarbon is missing or
    cannot start here."""
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        return None
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    _tell_cpu_model()
    try:
        tracker = OfflineEmissionsTracker(
            country_iso_code="USA",  # only its grid mix depends on this, and lmforge does not use its CO2
            output_methods=[],  # no files, no API: lmforge logs the figures itself
            log_level="error",
            tracking_mode="process",
            allow_multiple_runs=True,
            gpu_ids=[device.index or 0] if device.type == "cuda" else [],
        )
        tracker.start()
    except Exception:  # a meter that cannot start must not stop a training run
        return None
    return tracker if hasattr(tracker, "_total_energy") else None


def _tell_cpu_model() -> None:
    """codecarbon asks py-cpuinfo for the CPU's model name, which starts a Python process to run CPUID: 1.2 s of a
    core beside the first training steps (on 2 cores, char-small's first 7 steps ran 4-8x slower, 1.7 s in all).
    Linux's /proc/cpuinfo holds the same name, read from CPUID by the kernel: codecarbon's cached question
    (codecarbon.core.util.detect_cpu_model) is answered with it. Elsewhere, or where codecarbon asks otherwise, it
    asks as it does."""
    model = cpuinfo("model name")
    try:
        import cpuinfo as py_cpuinfo
        from codecarbon.core.util import detect_cpu_model
    except ImportError:
        return
    if not model or not hasattr(detect_cpu_model, "cache_info"):
        return
    ask = py_cpuinfo.get_cpu_info
    py_cpuinfo.get_cpu_info = lambda: {"brand_raw": model}
    try:
        detect_cpu_model()
    finally:
        py_cpuinfo.get_cpu_info = ask
