"""Which device and precision to train on, and why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # cuda | mps | cpu
    name: str
    bf16: bool
    memory_gb: float | None

    def describe(self) -> str:
        mem = f", {self.memory_gb:.0f} GB" if self.memory_gb else ""
        return f"{self.kind} ({self.name}{mem})"


def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX make bf16 autocast pay off on a CPU; without them it is slower than fp32.
    TUNESMITH_CPU_BF16=0 plans as on a CPU without them (fp32), to see what such a machine gets."""
    import os

    forced = os.environ.get("TUNESMITH_CPU_BF16", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def detect_device() -> DeviceInfo:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, torch.cuda.is_bf16_supported(), props.total_memory / 2**30)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple GPU", True, None)
    import platform

    return DeviceInfo("cpu", platform.processor() or platform.machine(), cpu_supports_bf16(), None)
