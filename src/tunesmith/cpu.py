"""What this machine's CPU can do, read once from the kernel's own list of its feature flags."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx512f``, ``avx512_bf16``, ``amx_tile``, ...) from ``/proc/cpuinfo``;
    empty where there is no such file (not Linux), so every feature test answers "absent" there."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))
