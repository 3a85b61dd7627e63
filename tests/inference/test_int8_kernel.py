"""tunesmith's own int8 kernel (`inference.int8_kernel`): its products, its batch-invariance, and every way
of falling back to PyTorch's kernel with the reason said."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tunesmith.errors import ModelError  # noqa: E402
from tunesmith.inference import int8_kernel  # noqa: E402
from tunesmith.inference.int8_kernel import ENV, int8_mm, kernel  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_choice():
    """Each test decides the kernel afresh, and leaves the next test to decide it again."""
    int8_kernel.reset()
    yield
    int8_kernel.reset()


#: reasons a machine legitimately has no kernel of tunesmith's (any other reason is a broken kernel: a failure)
_NOT_FOR_THIS_MACHINE = ("no C++ compiler", "it is written for x86-64", "this CPU has neither", ENV)


def _own_kernel() -> None:
    chosen = kernel()
    if chosen.name == "torch":
        if not chosen.reason.startswith(_NOT_FOR_THIS_MACHINE):
            pytest.fail(f"tunesmith's int8 kernel should work here but {chosen.reason}")
        pytest.skip(f"tunesmith's int8 kernel is not available here: {chosen.reason}")


def _case(m: int, n: int, k: int, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scales = (torch.rand(n, generator=gen) / 50 + 1e-4).to(torch.bfloat16)
    return x, w, scales


def _exact(x, w, scales):
    """The function both kernels compute, in float64: bf16(x) . w * scale (before the final bf16 rounding)."""
    return (x.to(torch.bfloat16).double() @ w.double().t()) * scales.double()


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("n,k", [(1, 1), (3, 7), (4, 16), (5, 17), (37, 100), (64, 576), (9, 1536)])
def test_the_kernel_computes_the_bfloat16_int8_product(m, n, k):
    _own_kernel()
    x, w, scales = _case(m, n, k)
    got = int8_mm(x, w, scales)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    want = _exact(x, w, scales)
    # float32 sums in another order, then one bfloat16 rounding: within two bfloat16 steps of the exact value
    assert torch.allclose(got.double(), want, rtol=2 ** -7, atol=1e-5), (got.double() - want).abs().max()
    # and every output is a bfloat16 number, as PyTorch's kernel returns
    assert torch.equal(got, got.to(torch.bfloat16).float())
    # the exact value rounded once, but where float32's summation order tips a rounding (rare)
    assert (got != want.float().to(torch.bfloat16).float()).float().mean() <= 0.05


def test_the_kernel_agrees_with_pytorchs_to_a_bfloat16_step_on_model_shapes():
    _own_kernel()
    for m, n, k in ((1, 960, 576), (4, 1536, 576), (1, 576, 1536)):
        x, w, scales = _case(m, n, k, seed=m + n)
        ours = int8_mm(x, w, scales)
        theirs = torch._weight_int8pack_mm(x.to(torch.bfloat16), w, scales).float()
        assert torch.allclose(ours, theirs, rtol=2 ** -7, atol=1e-5)


def test_a_rows_product_does_not_depend_on_the_batch_it_is_in():
    """Batched, prefilled and single-token products of one row are the same bits."""
    _own_kernel()
    x, w, scales = _case(13, 70, 200, seed=3)
    batch = int8_mm(x, w, scales)
    for i in range(13):
        assert torch.equal(int8_mm(x[i:i + 1], w, scales), batch[i:i + 1])
    assert torch.equal(int8_mm(x[5:11], w, scales), batch[5:11])


def test_the_kernel_refuses_tensors_it_does_not_take():
    _own_kernel()
    x, w, scales = _case(2, 8, 32)
    with pytest.raises(RuntimeError, match="x must be a contiguous float32"):
        torch.ops.tunesmith_kernels.int8_linear(x.double(), w, scales)
    with pytest.raises(RuntimeError, match="w must be a contiguous int8"):
        torch.ops.tunesmith_kernels.int8_linear(x, w[:, :16].contiguous(), scales)
    with pytest.raises(RuntimeError, match="scales must be a contiguous bfloat16"):
        torch.ops.tunesmith_kernels.int8_linear(x, w, scales.float())


def test_pytorchs_kernel_on_request(monkeypatch):
    monkeypatch.setenv(ENV, "torch")
    chosen = kernel()
    assert chosen.name == "torch" and chosen.reason == f"{ENV}=torch"
    x, w, scales = _case(3, 16, 64)
    assert torch.equal(int8_mm(x, w, scales), torch._weight_int8pack_mm(x.to(torch.bfloat16), w, scales).float())


def test_an_unknown_kernel_name_is_an_error(monkeypatch):
    monkeypatch.setenv(ENV, "fastest")
    with pytest.raises(ModelError) as info:
        kernel()
    assert info.value.message == f"{ENV}='fastest' is not a kernel tunesmith knows"
    assert info.value.hint == "set it to torch (PyTorch's kernel), tunesmith (this package's own) or leave it unset"


def _no_cached_build(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"


def test_without_a_compiler_pytorchs_kernel_answers_and_says_why(monkeypatch, tmp_path):
    _no_cached_build(monkeypatch, tmp_path)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    chosen = kernel()
    assert chosen.name == "torch"
    assert chosen.reason.startswith(f"no C++ compiler was found (CXX={tmp_path / 'no-such-compiler'}); install one")
    x, w, scales = _case(2, 8, 64)
    assert torch.equal(int8_mm(x, w, scales), torch._weight_int8pack_mm(x.to(torch.bfloat16), w, scales).float())
    int8_kernel.reset()
    monkeypatch.setenv(ENV, "tunesmith")  # asked for by name: the fallback is an error that says why
    with pytest.raises(ModelError) as info:
        kernel()
    assert info.value.message.startswith(f"{ENV}=tunesmith asks for tunesmith's int8 kernel, but no C++ compiler")
    assert info.value.hint == f"unset {ENV} to fall back to PyTorch's kernel, or fix the cause above"


def test_a_failed_build_leaves_no_partial_library(monkeypatch, tmp_path):
    kernels = _no_cached_build(monkeypatch, tmp_path)
    fake = tmp_path / "broken-cxx"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --version) echo fake 1.0; exit 0;; esac; done\n"
                    "for a in \"$@\"; do last=$a; done\necho partial > \"$last\"\necho 'error: boom' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setattr(int8_kernel, "_isa_flags", lambda: "avx2 fma")
    chosen = kernel()
    assert chosen.name == "torch" and chosen.reason == "compiling it failed (exit 3: error: boom)"
    assert list(kernels.iterdir()) == []  # the half-written output was removed


@pytest.mark.parametrize("machine,flags,reason", [
    ("aarch64", {"asimd"}, "it is written for x86-64 and this machine is aarch64"),
    ("x86_64", {"sse2", "avx"}, "this CPU has neither AVX-512 nor AVX2 with FMA"),
])
def test_cpus_it_is_not_written_for_get_pytorchs_kernel(monkeypatch, tmp_path, machine, flags, reason):
    _no_cached_build(monkeypatch, tmp_path)
    monkeypatch.setattr("platform.machine", lambda: machine)
    monkeypatch.setattr("tunesmith.cpu.cpu_flags", lambda: frozenset(flags))
    assert kernel() == int8_kernel.Int8Kernel("torch", reason)


def test_the_build_is_made_once_per_machine_and_reused(monkeypatch, tmp_path):
    """A real compile into an empty cache, then the cached library is taken without compiling."""
    from tunesmith.cpu import cpu_flags

    if "avx512f" not in cpu_flags() and not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("this CPU has neither AVX-512 nor AVX2 with FMA")
    kernels = _no_cached_build(monkeypatch, tmp_path)
    try:
        first = int8_kernel._build()
    except int8_kernel._Unavailable as why:
        pytest.skip(f"no build here: {why}")
    assert first.parent == kernels and first.is_file() and [p.name for p in kernels.iterdir()] == [first.name]
    stamp = first.stat().st_mtime_ns

    version = subprocess.run([int8_kernel._compiler(), "--version"], capture_output=True, text=True).stdout

    def no_compiling(command, **kwargs):
        if "--version" not in command:
            raise AssertionError("compiled again")
        return subprocess.CompletedProcess(command, 0, stdout=version, stderr="")

    monkeypatch.setattr("subprocess.run", no_compiling)
    assert int8_kernel._build() == first and first.stat().st_mtime_ns == stamp


def test_a_library_that_fails_its_self_check_is_not_used(monkeypatch):
    _own_kernel()
    library = kernel().library
    monkeypatch.setattr(int8_kernel, "_self_check", lambda: False)
    with pytest.raises(int8_kernel._Unavailable, match="gave wrong products in a self-check"):
        int8_kernel._load(library)


def test_the_kernel_is_part_of_the_int8_engines_fingerprint(tiny_model_dir, monkeypatch):
    from tunesmith.inference.local import LocalBackend

    _own_kernel()
    ours = LocalBackend(tiny_model_dir, quant="int8")
    assert ours.int8_kernel.startswith("tunesmith-")
    int8_kernel.reset()
    monkeypatch.setenv(ENV, "torch")
    theirs = LocalBackend(tiny_model_dir, quant="int8")
    assert theirs.int8_kernel == "torch" and theirs.fingerprint != ours.fingerprint
    assert LocalBackend(tiny_model_dir).int8_kernel is None


_AVX2_CHECK = """
import torch
from tunesmith.inference.int8_kernel import int8_mm, kernel
chosen = kernel()
assert chosen.name == "tunesmith-avx2", chosen
gen = torch.Generator().manual_seed(1)
x = torch.randn(7, 203, generator=gen)
w = torch.randint(-127, 128, (45, 203), generator=gen, dtype=torch.int8)
scales = (torch.rand(45, generator=gen) / 50 + 1e-4).to(torch.bfloat16)
got = int8_mm(x, w, scales)
want = (x.to(torch.bfloat16).double() @ w.double().t()) * scales.double()
assert torch.allclose(got.double(), want, rtol=2 ** -7, atol=1e-5)
assert all(torch.equal(int8_mm(x[i:i + 1], w, scales), got[i:i + 1]) for i in range(7))
print("avx2 ok")
"""


def test_the_avx2_path_builds_and_computes_the_same_function(tmp_path):
    """The code path of CPUs without AVX-512, built with AVX-512 switched off (in a process of its own: a
    process holds one library of the kernel)."""
    import sys

    from tunesmith.cpu import cpu_flags

    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("this CPU has no AVX2 with FMA")
    try:
        int8_kernel._compiler()
    except int8_kernel._Unavailable as why:
        pytest.skip(str(why))
    env = {**os.environ, "TUNESMITH_CACHE": str(tmp_path), "TUNESMITH_INT8_KERNEL_ISA": "avx2",
           "TUNESMITH_INT8_KERNEL": "tunesmith"}
    proc = subprocess.run([sys.executable, "-c", _AVX2_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "avx2 ok", proc.stderr[-2000:]


def test_an_unknown_instruction_set_is_an_error(monkeypatch, tmp_path):
    _no_cached_build(monkeypatch, tmp_path)
    monkeypatch.setattr(int8_kernel, "_isa_flags", lambda: "avx2 fma")
    monkeypatch.setenv("TUNESMITH_INT8_KERNEL_ISA", "sse")
    with pytest.raises(ModelError) as info:
        kernel()
    assert info.value.message == "TUNESMITH_INT8_KERNEL_ISA='sse' is not an instruction set the int8 kernel has"
    assert info.value.hint == "set it to avx2 (the AVX2 path on an AVX-512 CPU) or native, or leave it unset"


def test_an_unwritable_cache_folder_falls_back_and_says_where(monkeypatch, tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    monkeypatch.setenv("TUNESMITH_CACHE", str(blocker))  # kernels/ would have to live inside a file
    monkeypatch.setattr(int8_kernel, "_isa_flags", lambda: "avx2 fma")
    chosen = kernel()
    assert chosen.name == "torch"
    assert chosen.reason.startswith(f"its cache folder {blocker / 'kernels'} cannot be written (")
    assert chosen.reason.endswith("); set TUNESMITH_CACHE to a writable folder")
