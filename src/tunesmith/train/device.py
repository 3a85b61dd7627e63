"""Which device and precision to train on, and why; and whether bitsandbytes can run QLoRA on it."""

from __future__ import annotations

import functools
from dataclasses import dataclass

#: the first bitsandbytes release tunesmith has seen run 4-bit NF4 training on a CPU (forward, backward,
#: double quantisation); older ones have no CPU kernels for it
BNB_MIN_CPU = "0.50.0"
#: on CUDA: NF4 with double quantisation and the paged optimizers have been there since 0.43
BNB_MIN_CUDA = "0.43.0"


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
    from tunesmith.cpu import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def detect_device() -> DeviceInfo:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo("cuda", props.name, torch.cuda.is_bf16_supported(), props.total_memory / 2**30)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceInfo("mps", "Apple GPU", True, None)
    import platform

    return DeviceInfo("cpu", platform.processor() or platform.machine(), cpu_supports_bf16(), available_ram_gb())


def available_ram_gb() -> float | None:
    """RAM free for a new process now (psutil's `available`: free plus reclaimable cache), in GiB.
    What the plan sees on a CPU: total RAM would promise memory that other processes hold."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available / 2**30


def bnb_version() -> str | None:
    """The installed bitsandbytes version, or None (a function so that tests can fake an old one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsandbytes")
    except PackageNotFoundError:
        return None


def qlora_blocker(kind: str) -> str | None:
    """Why QLoRA cannot run on a device of this kind here, naming the bitsandbytes version it needs;
    None when the installed bitsandbytes runs a 4-bit layer forward and backward on it."""
    needed = {"cpu": BNB_MIN_CPU, "cuda": BNB_MIN_CUDA}.get(kind)
    if needed is None:
        return f"bitsandbytes has no 4-bit training kernels for {kind}"
    installed = bnb_version()
    if installed is None:
        return f"QLoRA on {kind} needs bitsandbytes >= {needed}, which is not installed"
    if _version_tuple(installed) < _version_tuple(needed):
        return f"QLoRA on {kind} needs bitsandbytes >= {needed}; {installed} is installed"
    return _probe(kind, installed)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def quiet_bitsandbytes() -> None:
    """bitsandbytes warns on import that its optional faster CPU kernel (fetched from the Hugging Face Hub
    by the `kernels` package) is missing; its built-in kernel is the one tunesmith means to use."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=None)
def _probe(kind: str, installed: str) -> str | None:
    """A version number promises kernels; a tiny NF4 Linear4bit run on the device proves them (a build
    without them fails here in a second, not minutes into a training run). Cached per process."""
    quiet_bitsandbytes()
    try:
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4",
                                  compress_statistics=True).to(kind)
        x = torch.randn(2, 64, device=kind, requires_grad=True)
        layer(x).sum().backward()
        if x.grad is None or not bool(torch.isfinite(x.grad).all()):
            return f"bitsandbytes {installed}'s 4-bit layer gives no usable gradient on {kind}"
    except Exception as exc:  # noqa: BLE001 - any failure means: no QLoRA here, and why
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"bitsandbytes {installed} cannot run a 4-bit layer on {kind}: {first}"
    return None
