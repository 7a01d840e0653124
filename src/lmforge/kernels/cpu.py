"""What this CPU is, as /proc/cpuinfo tells it: the kernels choose by vendor and instruction set."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products summed straight into int32


@functools.cache
def cpuinfo(field: str) -> str:
    """The first value of field ('vendor_id', 'model name', 'flags') in /proc/cpuinfo, else ''."""
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's vendor id ('AuthenticAMD', 'GenuineIntel') where /proc/cpuinfo tells it, else ''."""
    return cpuinfo("vendor_id")


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def has_vnni() -> bool:
    """Whether the CPU multiplies int8 pairs and sums them into int32 in one instruction (AVX-512 VNNI, AVX-VNNI or
    AMX). Without it an x86 CPU sums int8 pairs in int16, which saturates."""
    return any(flag in cpuinfo("flags").split() for flag in VNNI_FLAGS)


def has_avx2() -> bool:
    return "avx2" in cpuinfo("flags").split()


def has_avx512() -> bool:
    """Whether the CPU has AVX-512 (its foundation, avx512f): where MKL and oneDNN differ most on AMD."""
    return "avx512f" in cpuinfo("flags").split()
