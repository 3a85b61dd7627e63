"""How big a model is and how much memory this machine has, read without loading weights, converting
or downloading anything: for advice and budgets that must answer in seconds."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from tunesmith.errors import ModelError, UsageError

#: "...-8B-...", "SmolLM2-135M": a size in a model's name, used when nothing else can be read
_NAME_SIZE = re.compile(r"(?<![\dx.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.I)


def ram_gb() -> float | None:
    """Total memory in GiB (the plan's unit): psutil when installed, else /proc/meminfo."""
    try:
        import psutil

        return psutil.virtual_memory().total / 2**30
    except ImportError:  # not a tunesmith dependency
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 2**30
    except (OSError, ValueError, IndexError):
        pass
    return None


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def parse_params(text: str) -> int:
    """'135M', '8B', '1.5e9' or '7000000000' -> a parameter count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmbt]?)\s*", text, re.I)
    if not m:
        raise UsageError(f"--params {text!r} is not a size", "write it as 135M, 8B or 7000000000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def model_params(ref: str) -> tuple[int | None, str]:
    """(parameters, where the number came from), without loading weights, converting or downloading."""
    from tunesmith.models import resolve as r

    text = ref.strip()
    try:
        if text.startswith(r.BUILTIN_PREFIX):
            return _gguf_params(r.builtin_gguf(text[len(r.BUILTIN_PREFIX):].strip())), "GGUF header"
        path = Path(text).expanduser()
        if path.suffix.lower() == ".gguf" and path.is_file():
            return _gguf_params(path), "GGUF header"
        if path.is_dir():
            return checkpoint_params(r.resolve_model(text).path), "safetensors headers"
        if (hub := r.parse_hub_ref(text)) is not None:
            from huggingface_hub import snapshot_download

            try:  # the local Hugging Face cache only: advice never downloads a model
                snapshot = Path(snapshot_download(hub.repo_id, revision=hub.revision, local_files_only=True,
                                                  cache_dir=r.hub_cache_dir()))
            except Exception:  # noqa: BLE001 - not cached: fall back to the name
                snapshot = None
            if snapshot is not None and (found := checkpoint_params(snapshot)):
                return found, "safetensors headers (Hugging Face cache)"
    except ModelError as exc:
        return None, exc.message
    m = _NAME_SIZE.search(Path(text).name)
    if m:
        return int(float(m.group(1)) * (1e9 if m.group(2).lower() == "b" else 1e6)), "from its name, not measured"
    return None, "not in the local cache, nothing read offline; pass --params"


def checkpoint_params(path: Path) -> int | None:
    """Parameters from the safetensors headers (no weights loaded)."""
    try:
        from safetensors import safe_open

        total = 0
        for f in path.glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    n = 1
                    for d in st.get_slice(k).get_shape():
                        n *= d
                    total += n
        return total or None
    except Exception:  # noqa: BLE001 - an estimate only
        return None


def _gguf_params(path: Path) -> int | None:
    st = path.stat()
    return _gguf_count(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _gguf_count(path: str, size: int, mtime_ns: int) -> int | None:
    """Remembered per file version: GGUFReader parses the whole vocabulary too (seconds)."""
    try:
        from gguf import GGUFReader

        return sum(int(t.n_elements) for t in GGUFReader(path).tensors) or None
    except Exception:  # noqa: BLE001 - an estimate only, like the plan's
        return None
