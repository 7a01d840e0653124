"""What a machine can do, for `lmforge estimate`: peak FLOP/s, memory, bandwidth and power.

`this` is the machine at hand, measured on the spot (a short fp32 matmul and a copy, cached per CPU model and torch
version); the named GPUs carry their vendors' published figures; a YAML file with the same keys describes any other.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from lmforge.atomic import write_text_atomic
from lmforge.cache import cache_root
from lmforge.config import YAML_ERRORS
from lmforge.errors import LmforgeError
from lmforge.kernels.cpu import cpuinfo


@dataclass
class Hardware:
    """One device's figures; estimates multiply by the number of devices."""

    name: str
    fp32_tflops: float  # dense peak
    bf16_tflops: float  # dense peak (tensor cores, fp32 accumulate); without sparsity
    memory_gb: float
    bandwidth_gbs: float  # memory bandwidth, GB/s
    power_w: float  # board power (TDP) at full load
    utilization: float = 0.4  # the share of peak a training run typically reaches (the default of --utilization)

    def peak_flops(self, precision: str) -> float:
        return 1e12 * (self.bf16_tflops if precision == "bf16" else self.fp32_tflops)


# Vendors' datasheet figures (dense, no sparsity), SXM boards where there are several:
# A100: NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): FP32 19.5, BF16 312 TFLOPS, 2,039 GB/s, 400 W.
# H100: NVIDIA H100 Tensor Core GPU datasheet (SXM): FP32 67, BF16 989 (1,979 with sparsity), 80 GB, 3.35 TB/s, 700 W.
# H200: NVIDIA H200 Tensor Core GPU datasheet (SXM): FP32 67, BF16 989 (1,979 with sparsity), 141 GB, 4.8 TB/s, 700 W.
# L4: NVIDIA L4 Tensor Core GPU datasheet: FP32 30.3, BF16 121 (242 with sparsity), 24 GB, 300 GB/s, 72 W.
# RTX 4090: NVIDIA Ada Lovelace architecture whitepaper (appendix, GeForce RTX 4090): FP32 82.6, BF16 with FP32
# accumulate 165.2 (330.3 with sparsity), 24 GB GDDR6X, 1,008 GB/s, 450 W total graphics power.
PROFILES = {
    "A100": Hardware("A100", 19.5, 312.0, 80.0, 2039.0, 400.0),
    "H100": Hardware("H100", 67.0, 989.0, 80.0, 3350.0, 700.0),
    "H200": Hardware("H200", 67.0, 989.0, 141.0, 4800.0, 700.0),
    "L4": Hardware("L4", 30.3, 121.0, 24.0, 300.0, 72.0),
    "RTX4090": Hardware("RTX4090", 82.6, 165.2, 24.0, 1008.0, 450.0),
}

WATTS_PER_CORE = 10.0  # `this`: a server or desktop CPU's TDP shared over its cores (e.g. 150-250 W / 16-24 cores)
CPU_UTILIZATION = 0.52  # `this`: char-small on one thread reaches 0.38-0.40 (AMD) to 0.66-0.72 (Intel) of the probe
CACHE = cache_root() / "hardware.json"


def _cpu_model() -> str:
    """The CPU's name, with its family and model numbers where it has them: a virtual machine may call a Zen 3 and a
    Zen 5 both "AMD EPYC", and their peaks differ threefold."""
    name = cpuinfo("model name") or platform.processor() or platform.machine()
    family, model = cpuinfo("cpu family"), cpuinfo("model")
    return f"{name} (family {family}, model {model})" if family and model else name


def best_time(fn, reps: int = 3) -> float:
    """The fastest of reps runs of fn, in seconds (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_flops(n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n matrix product, the faster of torch's (MKL on x86) and oneDNN's (what lmforge's linear
    layers run on AMD with AVX-512, where MKL takes its AVX2 path at half oneDNN's speed): the practical peak MFU is
    measured against, by the benchmarks and by a training run's log alike. Its operands come from a generator of its
    own: a run that measures the peak (the first on a machine) draws the same dropout masks as one that reads it
    cached."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(dtype) for _ in range(2))
    products = [lambda: a @ b]
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    best = float("inf")
    for product in products:
        product()
        best = min(best, best_time(product, reps))
    return 2 * n**3 / best


def _probe() -> dict:
    """Peak FLOP/s (fp32, and bf16 where the CPU has it) and the bandwidth of a 64 MB copy."""
    from lmforge.kernels.bf16 import bf16_supported

    fp32 = matmul_peak_flops(reps=3)
    bf16 = matmul_peak_flops(reps=3, dtype=torch.bfloat16) if bf16_supported() else fp32
    src = torch.empty(16 * 2**20)  # 64 MB of fp32
    dst = torch.empty_like(src)
    dst.copy_(src)
    bandwidth = 2 * src.nbytes / best_time(lambda: dst.copy_(src))  # read and write
    return {"tflops": fp32 / 1e12, "bf16_tflops": bf16 / 1e12, "bandwidth_gbs": bandwidth / 1e9}


def this_machine(cache: Path | None = None, measure: bool = False) -> Hardware:
    """This machine, measured once per CPU model and torch version (the figures cached in ~/.cache/lmforge), or again
    with measure=True (the benchmarks), the cache then keeping each figure's highest: a moment when other work shares
    the machine measures low, never high (a Zen 4's product measured 111 and 201-218 GFLOP/s within a minute), and a
    training run's MFU is read against it."""
    cache = cache or CACHE
    key = f"{_cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | probe 2"
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if measure or not isinstance(known, dict) or not isinstance(known.get(key), dict):
        known = known if isinstance(known, dict) else {}
        before = known.get(key) if isinstance(known.get(key), dict) else {}
        known[key] = {name: max(value, _number(before.get(name))) for name, value in _probe().items()}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache, json.dumps(known, indent=1))
        except OSError:
            pass  # a read-only home: measure again next time
    probe = known[key]
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    return Hardware(
        "this", probe["tflops"], probe.get("bf16_tflops", probe["tflops"]), memory, probe["bandwidth_gbs"],
        WATTS_PER_CORE * torch.get_num_threads(), CPU_UTILIZATION,
    )  # fmt: skip


def _number(value) -> float:
    """A cached figure, or 0 where the cache holds none (or something else)."""
    return float(value) if isinstance(value, int | float) else 0.0


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The peak a run's MFU is measured against: this CPU's measured one, a named GPU's datasheet figure, else None."""
    if device.type == "cpu":
        return this_machine().peak_flops(precision)
    if device.type == "cuda":
        known = _gpu_profile(device)
        return known.peak_flops(precision) if known is not None else None
    return None


def _gpu_profile(device: torch.device) -> Hardware | None:
    """The named profile of a CUDA device (PROFILES' key as a word of its name), or None."""
    name = _gpu_name(device)
    return next((p for key, p in PROFILES.items() if re.search(rf"\b{key}\b", name)), None)


def _gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device).replace("RTX 4090", "RTX4090")


def device_power(device: torch.device) -> tuple[float, str]:
    """The power a run on device draws at full load and where the figure comes from: a named GPU's board power (an
    unknown GPU counts as 300 W), or this CPU's threads at WATTS_PER_CORE each."""
    if device.type == "cuda":
        known = _gpu_profile(device)
        if known is not None:
            return known.power_w, f"estimated from the {known.name}'s board power, {known.power_w:.0f} W"
        return 300.0, f"estimated for an unknown GPU ({_gpu_name(device)}) at 300 W"
    threads = torch.get_num_threads()
    watts = WATTS_PER_CORE * threads
    return watts, f"estimated for {threads} CPU threads at {WATTS_PER_CORE:.0f} W each, {watts:.0f} W"


def read_hardware(path: Path) -> Hardware:
    """A user's profile: a YAML mapping with Hardware's keys (name and utilization optional)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LmforgeError(f"hardware profile {path}: cannot read it ({e.strerror})") from None
    except YAML_ERRORS as e:
        raise LmforgeError(f"hardware profile {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    keys = [f.name for f in fields(Hardware)]
    needed = [k for k in keys if k not in ("name", "utilization")]
    if not isinstance(raw, dict):
        raise LmforgeError(f"hardware profile {path} must be a mapping with keys {', '.join(needed)}")
    unknown = sorted(set(map(str, raw)) - set(keys))
    if unknown:
        raise LmforgeError(f"hardware profile {path}: unknown key {unknown[0]!r}; the keys are {', '.join(keys)}")
    absent = [k for k in needed if k not in raw]
    if absent:
        raise LmforgeError(f"hardware profile {path}: missing key {absent[0]!r}; give {', '.join(needed)}")
    for k in needed + ["utilization"] * ("utilization" in raw):
        value = raw[k]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise LmforgeError(f"hardware profile {path}: {k} = {value!r} must be a positive number")
    return Hardware(**{"name": path.stem, **raw})


def hardware_profile(name: str) -> Hardware:
    """`this`, a named GPU (case-insensitive), or a YAML file's path."""
    if name == "this":
        return this_machine()
    named = {k.lower(): v for k, v in PROFILES.items()}
    if name.lower().replace(" ", "") in named:
        return named[name.lower().replace(" ", "")]
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        return read_hardware(Path(name))
    raise LmforgeError(f"unknown hardware {name!r}: give this, {', '.join(PROFILES)} or a YAML file with the same keys")
