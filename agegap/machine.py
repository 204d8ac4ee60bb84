"""The CPU this process runs on, read once from /proc/cpuinfo: benchmarks name it, and
``precision: auto`` asks it what the hardware multiplies natively. Free of Keras, so that
scripts can name the machine without importing a backend."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's entries in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    entries: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        entries.setdefault(key.strip(), value.strip())
    return entries


def cpu_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_name() -> str:
    """The CPU's model and core count: every measured figure names the machine."""
    model = _cpuinfo().get("model name") or platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


# The instruction sets that decide which kernels oneDNN runs, and so the last digits.
NUMERIC_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def native_features() -> tuple[str, ...]:
    """Which of :data:`NUMERIC_FEATURES` this CPU has."""
    flags = cpu_flags()
    return tuple(feature for feature in NUMERIC_FEATURES if feature in flags)


def cpu_has_amx() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (Intel AMX, Sapphire Rapids on)."""
    return "amx_bf16" in cpu_flags()
