"""The int8 matrix product behind `--quant int8`: tunesmith's own CPU kernel where it builds, else PyTorch's.

Decoding one token reads every weight once, so on a CPU its speed is the speed at which the weights stream
from memory. `torch._weight_int8pack_mm` reads them at about half of what two cores can stream: measured on
a 2-core Sapphire Rapids VM over SmolLM2-135M's 134 MB of int8 weights (one token's worth, 121 products),
10.3 ms against 5.2 ms for `kernels/int8_linear.cpp`, which computes the same function but prefetches each
weight row a few kilobytes ahead (`benchmarks/decode_speed.py`, rows ``tunesmith-int8-1``).

The kernel is C++ (AVX-512, or AVX2 with FMA) compiled on first use with the machine's C++ compiler against
the installed torch (`-O3 -march=native`, about 5 seconds), cached under ``~/.cache/tunesmith/kernels`` by a
hash of its source, torch's version, the compiler and the CPU's flags, and loaded as a torch operator (so it
runs on torch's own threads). Where it cannot be had (no compiler, another architecture, a failed build or
self-check) PyTorch's kernel answers instead and `kernel().reason` says why; ``TUNESMITH_INT8_KERNEL=torch``
picks PyTorch's kernel on purpose, ``=tunesmith`` makes the fallback an error, and
``TUNESMITH_INT8_KERNEL_ISA=avx2`` builds the AVX2 code path on a CPU with AVX-512 (to test and measure
what a CPU without AVX-512 gets).

Both compute y = bf16(sum_k bf16(x) * w * scale) with float32 sums, in different orders, so answers may
differ in the last bit of a logit; the kernel's name is part of the engine's fingerprint, so cached answers
of one are never served as the other's. Each row is summed in the same order whatever the batch is, so
batched, prefilled and single-token results agree bit for bit (tested).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError

ENV = "TUNESMITH_INT8_KERNEL"
ISA_ENV = "TUNESMITH_INT8_KERNEL_ISA"
SOURCE = Path(__file__).parent / "kernels" / "int8_linear.cpp"
_TORCH_NAMES = ("torch", "0", "false", "no", "off")
_OWN_NAMES = ("tunesmith", "1", "true", "yes", "on")


@dataclass(frozen=True)
class Int8Kernel:
    """Which kernel multiplies: ``tunesmith-avx512``, ``tunesmith-avx2`` or ``torch``; with `reason`
    saying why PyTorch's, where it is."""

    name: str
    reason: str | None = None
    library: Path | None = None


_LOCK = threading.Lock()
_KERNEL: Int8Kernel | None = None


def kernel() -> Int8Kernel:
    """The kernel this process multiplies with, decided (and built, the first time on a machine) once."""
    global _KERNEL
    with _LOCK:
        if _KERNEL is None:
            _KERNEL = _choose()
        return _KERNEL


def reset() -> None:
    """Forget the choice (tests change the environment between calls; a loaded library stays loaded)."""
    global _KERNEL
    with _LOCK:
        _KERNEL = None


def int8_mm(x: Any, weight: Any, scales: Any) -> Any:
    """float32 [M, N] = x [M, K] (float32, taken as bfloat16) times int8 `weight` [N, K] times bfloat16
    `scales` [N], the product rounded to bfloat16."""
    import torch

    if (_KERNEL or kernel()).name != "torch":  # the lock only until the choice is made: this is a hot path
        return torch.ops.tunesmith_kernels.int8_linear(x.contiguous(), weight, scales)
    return torch._weight_int8pack_mm(x.to(torch.bfloat16), weight, scales).to(torch.float32)


def _choose() -> Int8Kernel:
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in _TORCH_NAMES:
        return Int8Kernel("torch", f"{ENV}={os.environ[ENV]}")
    if forced and forced not in _OWN_NAMES + ("auto",):
        raise ModelError(f"{ENV}={os.environ[ENV]!r} is not a kernel tunesmith knows",
                         "set it to torch (PyTorch's kernel), tunesmith (this package's own) or leave it unset")
    try:
        return _load(_build())
    except _Unavailable as why:
        if forced in _OWN_NAMES:
            raise ModelError(f"{ENV}={os.environ[ENV]} asks for tunesmith's int8 kernel, but {why}",
                             f"unset {ENV} to fall back to PyTorch's kernel, or fix the cause above") from None
        return Int8Kernel("torch", str(why))


class _Unavailable(Exception):
    """Why tunesmith's kernel cannot be had here (a sentence)."""


def _isa_flags() -> str:
    from tunesmith.cpu import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise _Unavailable(f"it is written for x86-64 and this machine is {platform.machine() or 'unknown'}")
    flags = cpu_flags()
    if "avx512f" in flags or {"avx2", "fma"} <= flags:
        return " ".join(sorted(flags))
    raise _Unavailable("this CPU has neither AVX-512 nor AVX2 with FMA")


def _isa_options() -> list[str]:
    isa = os.environ.get(ISA_ENV, "").strip().lower()
    if isa in ("", "native"):
        return []
    if isa == "avx2":
        return ["-mno-avx512f"]  # -march=native's AVX-512 off: the kernel's AVX2 path
    raise ModelError(f"{ISA_ENV}={os.environ[ISA_ENV]!r} is not an instruction set the int8 kernel has",
                     "set it to avx2 (the AVX2 path on an AVX-512 CPU) or native, or leave it unset")


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx or not (shutil.which(cxx) or Path(cxx).is_file()):
        raise _Unavailable(f"no C++ compiler was found ({'CXX=' + cxx if cxx else 'no g++ or c++ on PATH'}); "
                           "install one (e.g. apt install g++) for about twice the int8 decoding speed")
    return cxx


def _cache_dir() -> Path:
    from tunesmith.models.resolve import default_cache_dir

    return default_cache_dir() / "kernels"


def _build() -> Path:
    """The compiled library's path, compiled now if this machine has none for this source and torch."""
    import torch
    from torch.utils import cpp_extension

    flags = _isa_flags()
    cxx = _compiler()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise _Unavailable(f"the C++ compiler {cxx} does not run ({exc})") from None
    abi = int(torch.compiled_with_cxx11_abi())
    libdir = cpp_extension.library_paths()[0]
    command = [cxx, "-O3", "-march=native", *_isa_options(), "-std=c++17", "-fPIC", "-shared", "-fopenmp",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w",
               *(f"-I{p}" for p in cpp_extension.include_paths()),
               str(SOURCE), f"-L{libdir}", "-lc10", "-ltorch", "-ltorch_cpu", f"-Wl,-rpath,{libdir}"]
    options = " ".join(c for c in command if c.startswith("-") and not c.startswith(("-I", "-L")))
    key = hashlib.sha256("\0".join([SOURCE.read_text(encoding="utf-8"), torch.__version__, version, flags,
                                    options, sys.version]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"int8_linear-{key}.so"
    if target.is_file():
        return target
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.touch()
    except OSError as exc:
        raise _Unavailable(f"its cache folder {target.parent} cannot be written ({exc.strerror or exc}); "
                           "set TUNESMITH_CACHE to a writable folder") from None
    print("building tunesmith's int8 kernel for this CPU once (a few seconds) ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run([*command, "-o", str(partial)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        partial.unlink(missing_ok=True)
        raise _Unavailable(f"compiling it failed ({exc})") from None
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise _Unavailable(f"compiling it failed (exit {proc.returncode}: {tail})")
    os.replace(partial, target)  # a finished library or none: a concurrent build renames the same bytes
    return target


def _load(library: Path) -> Int8Kernel:
    import torch

    try:
        if not _registered():  # a process holds one library of the kernel (its operators' names)
            torch.ops.load_library(str(library))
        isa = str(torch.ops.tunesmith_kernels.isa())
    except (OSError, RuntimeError) as exc:
        raise _Unavailable(f"its library {library} does not load ({exc})") from None
    if not _self_check():
        raise _Unavailable(f"its library {library} gave wrong products in a self-check (delete it to rebuild)")
    return Int8Kernel(f"tunesmith-{isa}", None, library)


def _registered() -> bool:
    import torch

    try:
        torch.ops.tunesmith_kernels.isa  # noqa: B018 - the attribute lookup is the test
        return True
    except (AttributeError, RuntimeError):
        return False


def _self_check() -> bool:
    """The kernel's products against float64 arithmetic on odd shapes (tails in every dimension): the same
    numbers within one bfloat16 rounding step."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for m, n, k in ((1, 37, 100), (5, 64, 576), (3, 9, 17)):
        x = torch.randn(m, k, generator=gen)
        w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scales = (torch.rand(n, generator=gen) / 100).to(torch.bfloat16)
        got = torch.ops.tunesmith_kernels.int8_linear(x, w, scales)
        want = (x.to(torch.bfloat16).double() @ w.double().t()) * scales.double()
        if got.shape != (m, n) or not torch.allclose(got.double(), want, rtol=1 / 128, atol=1e-6):
            return False
    return True
