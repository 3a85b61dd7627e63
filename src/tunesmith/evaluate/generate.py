"""Generation backends: something that turns chats into answers, and says exactly which model answered.

* `LocalBackend`    -- transformers on this machine (CPU or GPU), a PEFT LoRA adapter on top when given.
  Prompts are rendered with `tunesmith.models.chat.render`, the function training and serving use, so
  the model is evaluated on the very prompt format it was trained on. Generation is batched with left
  padding and a KV cache, finished rows leave the batch as soon as they end, and greedy answers are
  the ones plain ``model.generate`` gives one prompt at a time (the tests and
  ``benchmarks/eval_generation.py`` check this token for token).
* `EndpointBackend` -- any OpenAI-compatible chat-completions server, through the shared client
  layer (`tunesmith.inference.openai_client`: one retry policy with the teacher and the judge), with
  bounded concurrency; one failing prompt never sinks the others, a refused key or model stops them all.
* `VLLMBackend`     -- offline vLLM, only where ``vllm`` is installed (`vllm_available`).

Every backend has a `fingerprint` (what `tunesmith.evaluate.cache` keys answers on) and
``generate(chats, settings, progress=None) -> list[Generation]`` returning answers in the order of
`chats`. ``progress(n)`` is called with the number of prompts answered so far. The backends here also
accept ``on_result(index, generation)``, called once per prompt as soon as its answer exists, which
is how `CachedBackend` stores finished work before the whole call returns.

Decoding follows `DecodeSettings` and nothing else (OpenAI semantics): temperature 0 is greedy,
otherwise temperature + top-p sampling; no top-k and no repetition penalty, whatever the checkpoint's
``generation_config.json`` says, so the same settings decode the same way on every backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tunesmith.errors import ModelError, TunesmithError, UsageError
from tunesmith.evaluate.types import DecodeSettings, Generation
from tunesmith.inference.contract_stop import ContractWatch
from tunesmith.inference.concurrent import run_concurrently
from tunesmith.inference.openai_client import (  # light: openai itself loads in ChatClient()
    ChatClient,
    EndpointRefused,
    RequestFailed,
    RetryPolicy,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

Chat = list[dict[str, str]]
Progress = Callable[[int], None]
OnResult = Callable[[int, Generation], None]

__all__ = [
    "Backend",
    "EndpointBackend",
    "EndpointError",
    "LocalBackend",
    "VLLMBackend",
    "auto_batch_size",
    "truncate_at_stop",
    "vllm_available",
]


class EndpointError(TunesmithError):
    """The OpenAI-compatible endpoint cannot be used at all (unreachable, refused the key, no such model)."""


@runtime_checkable
class Backend(Protocol):
    """Answers chats. `fingerprint` identifies the model exactly (a cache key component)."""

    fingerprint: str

    def generate(self, chats: list[Chat], settings: DecodeSettings,
                 progress: Progress | None = None) -> list[Generation]: ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut at the earliest occurrence of any stop string (excluded); whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _sha256(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


# =============================================================================================
# local transformers backend

#: files whose presence means a directory carries its own tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: files that decide how prompts are tokenised and rendered (hashed into the fingerprint)
_TOKENIZER_FINGERPRINT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                "chat_template.jinja", "chat_template.json", "tokenizer.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

#: most sequences decoded together, by device type (see auto_batch_size)
BATCH_CAP = {"cpu": 32, "cuda": 64, "mps": 32}
#: share of the currently free memory the batch may take (KV cache + activations)
MEMORY_SHARE = 0.4


def _available_memory(device: str) -> int:
    """Free bytes on `device` right now: the GPU's free memory, else MemAvailable of this machine."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    with contextlib.suppress(ImportError):
        import psutil

        return int(psutil.virtual_memory().available)
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 4 << 30


def auto_batch_size(config: Any, prompt_tokens: int, max_new_tokens: int, *, dtype_bytes: int = 4,
                    available_bytes: int, device_type: str = "cpu") -> int:
    """How many sequences to decode together: what fits in MEMORY_SHARE of the free memory, capped.

    Per sequence it counts the KV cache of the whole sequence (2 x layers x kv-heads x head-dim x
    (prompt + new tokens) values), one layer's prefill activations (prompt x (4 x hidden + 3 x
    intermediate) values), one layer's attention scores in fp32 (heads x prompt^2) and two fp32 rows
    of logits. The cap (`BATCH_CAP`: 32 on CPU, 64 on CUDA) is where bigger batches stop paying off.
    On a CPU, decoding is compute-bound: SmolLM2-135M on one core made 88 tokens/s at 16 rows, 100 at
    32, 108 at 48 and 105 at 64 (96 pyfunc-json prompts, 128 new tokens), as a bigger batch spends
    longer waiting for its longest answer with few rows left.
    """
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 1024)
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or 24)
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 16)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or hidden // max(heads, 1))
    inter = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
    vocab = int(getattr(text, "vocab_size", 0) or 32000)
    seq = prompt_tokens + max_new_tokens
    kv = 2 * layers * kv_heads * head_dim * seq * dtype_bytes
    prefill = prompt_tokens * (4 * hidden + 3 * inter) * dtype_bytes + heads * prompt_tokens * prompt_tokens * 4
    per_sequence = kv + prefill + 2 * vocab * 4
    cap = BATCH_CAP.get(device_type, 16)
    return max(1, min(cap, int(available_bytes * MEMORY_SHARE // max(per_sequence, 1))))


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _default_dtype(device: str) -> str:
    """fp32 on CPU (bf16 there is slower and changes greedy answers); bf16 on a GPU that has it."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


class LocalBackend:
    """A transformers checkpoint (optionally + a PEFT LoRA adapter) answering on this machine.

    Nothing heavy happens in the constructor: paths are checked and the fingerprint is computed from
    file metadata and small files, so a fully cached evaluation never loads the model. The model is
    loaded on the first `generate` call that has something to generate.

    `batch_size` None picks it per batch with `auto_batch_size` (prompts are sorted longest first, so
    each batch's first prompt is its longest). `dtype` defaults to float32 on CPU, bfloat16 on a GPU.
    """

    #: answers are cut once they break `DecodeSettings.contract` (contract-aware stopping)
    honours_contract = True

    def __init__(self, model_path: Path | str, adapter_path: Path | str | None = None,
                 batch_size: int | None = None, device: str | None = None, *, dtype: str | None = None) -> None:
        self.model_path = Path(model_path).expanduser().resolve()
        self.adapter_path = Path(adapter_path).expanduser().resolve() if adapter_path is not None else None
        if batch_size is not None and batch_size < 1:
            raise ModelError(f"batch size must be at least 1, got {batch_size}", "Pass --batch-size 1 or more.")
        self.batch_size = batch_size
        self.device = device or _default_device()
        self.dtype = dtype or _default_dtype(self.device)
        self._check_paths()
        self.tokenizer_path = (self.adapter_path if self.adapter_path is not None
                               and any((self.adapter_path / f).is_file() for f in _TOKENIZER_FILES)
                               else self.model_path)
        self.fingerprint = self._fingerprint()
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    # -- identity ------------------------------------------------------------------------------

    def _check_paths(self) -> None:
        if not (self.model_path / "config.json").is_file():
            raise ModelError(f"{self.model_path} is not a model checkpoint directory: config.json is missing",
                             "Point at a directory written by save_pretrained (config.json, weights, tokenizer).")
        if self.adapter_path is not None:
            if not (self.adapter_path / "adapter_config.json").is_file():
                raise ModelError(f"{self.adapter_path} is not a PEFT adapter directory: adapter_config.json is missing",
                                 "Point at the adapter directory a training run wrote (runs/<id>/adapter).")
            if not self._adapter_weights():
                raise ModelError(f"{self.adapter_path} has no adapter weights (adapter_model.safetensors)",
                                 "The run may not have finished saving; resume or retrain it.")

    def _adapter_weights(self) -> list[Path]:
        assert self.adapter_path is not None
        return [p for p in (self.adapter_path / "adapter_model.safetensors", self.adapter_path / "adapter_model.bin")
                if p.is_file()]

    def _fingerprint(self) -> str:
        """sha256 over: engine + dtype, the base checkpoint (path, config, weight files' size and mtime),
        the tokenizer and chat template files, and the adapter (config + weights, by content)."""
        parts: list[str | bytes] = ["transformers", self.dtype, str(self.model_path),
                                    (self.model_path / "config.json").read_bytes()]
        for f in sorted(self.model_path.iterdir()):
            if f.suffix in _WEIGHT_SUFFIXES and f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        parts.append(f"tokenizer:{self.tokenizer_path == self.adapter_path}")
        for name in _TOKENIZER_FINGERPRINT_FILES:
            f = self.tokenizer_path / name
            if f.is_file():
                parts += [name, _file_sha256(f)]
        if self.adapter_path is not None:
            parts += ["adapter", (self.adapter_path / "adapter_config.json").read_bytes()]
            parts += [_file_sha256(p) for p in self._adapter_weights()]
        return _sha256(*parts)

    # -- loading -------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tunesmith.models.resolve import tokenizer_in

            self._tokenizer = tokenizer_in(self.tokenizer_path)
        return self._tokenizer

    @property
    def model(self) -> Any:
        """The loaded model (a PeftModel when there is an adapter), in eval mode on `device`."""
        with self._lock:
            if self._model is None:
                self._model = self._load_model()
        return self._model

    def _load_model(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, self.dtype)
        try:
            from tunesmith.models.quiet import quiet_transformers

            quiet_transformers()
            model = AutoModelForCausalLM.from_pretrained(str(self.model_path), dtype=dtype, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - becomes a user-facing error
            raise ModelError(f"cannot load the model in {self.model_path}: {_one_line(exc)}",
                             "Check that the directory is a complete transformers checkpoint.") from exc
        if self.adapter_path is not None:
            try:
                from peft import PeftModel
            except ImportError as exc:
                raise ModelError("evaluating a LoRA adapter needs the `peft` package, which is not installed",
                                 "Install the training extras: pip install 'tunesmith[train]'") from exc
            try:
                model = PeftModel.from_pretrained(model, str(self.adapter_path), is_trainable=False)
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"cannot load the adapter in {self.adapter_path} onto {self.model_path}: "
                                 f"{_one_line(exc)}",
                                 "Was the adapter trained on this base model? Evaluate it with the run's base model.") from exc
        try:
            model.to(self.device)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot move the model to device {self.device!r}: {_one_line(exc)}",
                             "Pick another device (cpu, cuda, cuda:1).") from exc
        model.eval()
        return model

    # -- generation ----------------------------------------------------------------------------

    def generate(self, chats: list[Chat], settings: DecodeSettings, progress: Progress | None = None,
                 *, on_result: OnResult | None = None) -> list[Generation]:
        from tunesmith.models.chat import prompt_ids

        if not chats:
            return []
        _check_settings(settings)
        tok = self.tokenizer
        prompts = prompt_ids(tok, chats)
        model = self.model
        collector = _Results(len(chats), progress, on_result)
        finish = collector.finish

        # Longest first: each batch's first prompt is its longest (batch sizing), similar lengths
        # share a batch (little padding), and an out-of-memory shows up at the start, not the end.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        queue: list[list[int]] = []
        pos = 0
        cap: int | None = None  # lowered after an out-of-memory
        decoder = _Decoder(model, tok, settings, self.device)
        while pos < len(order) or queue:
            if queue:
                batch = queue.pop(0)
            else:
                size = self.batch_size or self._auto_batch(len(prompts[order[pos]]), settings.max_new_tokens)
                size = min(size, cap) if cap else size
                batch, pos = order[pos:pos + size], pos + size
            finished: set[int] = set()

            def report(row: int, gen: Generation, batch: list[int] = batch, finished: set[int] = finished) -> None:
                finished.add(batch[row])
                finish(batch[row], gen)

            try:
                decoder.run([prompts[i] for i in batch], report, row_prefill=self._row_prefill())
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                left = [i for i in batch if i not in finished]
                if len(left) <= 1:
                    raise ModelError(f"out of memory generating one answer on {self.device} "
                                     f"(prompt of {len(prompts[left[0]]) if left else 0} tokens, "
                                     f"max_new_tokens {settings.max_new_tokens})",
                                     "Lower max_new_tokens, use a bigger device, or evaluate on CPU.") from exc
                _free_memory(self.device)
                half = (len(left) + 1) // 2
                cap = max(1, half)
                queue[:0] = [left[:half], left[half:]]
        return collector.complete()

    #: prefill prompt by prompt (True), as one padded batch (False), or None: by device (rows on CPU)
    row_prefill: bool | None = None

    def _row_prefill(self) -> bool:
        return self.row_prefill if self.row_prefill is not None else not self.device.startswith("cuda")

    def _auto_batch(self, prompt_tokens: int, max_new_tokens: int) -> int:
        import torch

        config = getattr(self.model, "config", None)
        return auto_batch_size(config, prompt_tokens, max_new_tokens,
                               dtype_bytes=torch.finfo(getattr(torch, self.dtype)).bits // 8,
                               available_bytes=_available_memory(self.device),
                               device_type=self.device.split(":")[0])


def _check_settings(settings: DecodeSettings) -> None:
    if settings.max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}",
                         "Pass --max-new-tokens 1 or more.")
    if settings.temperature < 0:
        raise UsageError(f"temperature must be 0 (greedy) or more, got {settings.temperature}",
                         "Use temperature 0 for a repeatable evaluation.")
    if not 0 < settings.top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {settings.top_p}", "Use top_p 1 to turn it off.")


class _Results:
    """Answers by prompt index as they arrive, reported to the progress and on_result callbacks."""

    def __init__(self, n: int, progress: Progress | None, on_result: OnResult | None) -> None:
        self.results: list[Generation | None] = [None] * n
        self.done = 0
        self.progress, self.on_result = progress, on_result

    def finish(self, index: int, gen: Generation) -> None:
        self.results[index] = gen
        self.done += 1
        if self.on_result is not None:
            self.on_result(index, gen)
        if self.progress is not None:
            self.progress(self.done)

    def complete(self) -> list[Generation]:
        results = self.results
        missing = sum(r is None for r in results)
        if missing:  # pragma: no cover - defensive
            raise RuntimeError(f"internal error: {missing} prompts got no answer")
        return [r for r in results if r is not None]


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


_PREALLOCATED_LAYER: type | None = None


def _preallocated_layer() -> type:
    """A `DynamicLayer` whose keys/values live in buffers with room to grow: appending a decoded
    position copies that position only, where `DynamicLayer` concatenates (copies) the whole cache at
    every step, which on a CPU costs about as much as the attention itself. `keys`/`values` are views
    of the filled part, so everything reading them sees what `DynamicLayer` would hold."""
    global _PREALLOCATED_LAYER
    if _PREALLOCATED_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class PreallocatedLayer(DynamicLayer):
            def __init__(self, capacity: int) -> None:
                super().__init__()
                self.capacity = capacity
                self.length = 0
                self._k: Any = None
                self._v: Any = None

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                n = key_states.shape[-2]
                if self._k is None or self.length + n > self._k.shape[-2]:
                    size = max(self.capacity, 2 * (self.length + n)) if self._k is not None else max(
                        self.capacity, n)
                    k = key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1]))
                    v = value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1]))
                    if self.length:
                        k[..., : self.length, :] = self._k[..., : self.length, :]
                        v[..., : self.length, :] = self._v[..., : self.length, :]
                    self._k, self._v = k, v
                self._k[..., self.length: self.length + n, :] = key_states
                self._v[..., self.length: self.length + n, :] = value_states
                self.length += n
                self.keys = self._k[..., : self.length, :]
                self.values = self._v[..., : self.length, :]
                return self.keys, self.values

            def batch_select_indices(self, indices: Any) -> None:
                if self._k is not None:
                    self._k, self._v = self._k[indices, ...], self._v[indices, ...]
                    self.keys = self._k[..., : self.length, :]
                    self.values = self._v[..., : self.length, :]

        _PREALLOCATED_LAYER = PreallocatedLayer
    return _PREALLOCATED_LAYER


def _new_cache(config: Any, capacity: int | None = None) -> Any:
    """A `DynamicCache` for `config`; with `capacity`, plain full-attention layers preallocate room
    for that many positions (other layer kinds are left as transformers makes them)."""
    import transformers.cache_utils as cache_utils
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    plain = getattr(cache_utils, "DynamicLayer", None)
    layers = getattr(cache, "layers", None)
    if capacity and layers and all(type(layer) is plain for layer in layers):
        cache.layers = [_preallocated_layer()(capacity) for _ in layers]
    return cache


def _can_evict(cache: Any) -> bool:
    """Whether finished rows can be dropped from `cache`: plain (or sliding-window) key/value layers
    only. Linear-attention and quantized layers keep other state; with those, finished rows go on
    decoding with their tokens ignored, as in ``model.generate``."""
    import transformers.cache_utils as cache_utils

    plain = getattr(cache_utils, "DynamicLayer", None)
    odd = tuple(t for t in (getattr(cache_utils, n, None) for n in ("LinearAttentionCacheLayerMixin",
                                                                    "BaseQuantizedLayer")) if isinstance(t, type))
    layers = getattr(cache, "layers", None)
    return (isinstance(plain, type) and bool(layers)
            and all(isinstance(layer, plain) and not isinstance(layer, odd) for layer in layers))


class _Decoder:
    """One batch of prompts through prefill and token-by-token decoding, mirroring ``model.generate``.

    The decoding steps see exactly what ``generate`` builds for a left-padded batch: a 2-D attention
    mask (dropped when nothing is padded), position ids = cumsum(mask) - 1 (so every row counts its
    positions from its own first real token, as it would alone), a dynamic KV cache, and logits of the
    last position only, taken in float32. Three things differ, none of them in the arithmetic a row
    sees: on CPU each prompt is prefilled alone (batch 1, no padding, so no compute goes to padding)
    and the caches are stacked left-padded; the cache keeps its keys/values in preallocated buffers
    (`_preallocated_layer`); and a row that has finished (end-of-turn token, stop string or
    max_new_tokens) leaves the batch at once, so the remaining rows do not carry it along.
    """

    def __init__(self, model: Any, tokenizer: Any, settings: DecodeSettings, device: str) -> None:
        from tunesmith.models.chat import end_of_turn_ids

        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.eot = end_of_turn_ids(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(self.eot, default=0)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.cache_kwarg = "cache" if _accepts(inner.forward, "cache") else "past_key_values"
        self.keep_logits = _accepts(inner.forward, "logits_to_keep")
        self.positions = _accepts(inner.forward, "position_ids")
        self.stop = tuple(s for s in settings.stop if s)
        #: enough trailing tokens to contain any stop string (a token is at least one byte, a
        #: character at most four)
        self.stop_window = 4 * max((len(s) for s in self.stop), default=0) + 4
        self.greedy = settings.temperature <= 0
        self.contract = settings.contract if settings.contract is not None and settings.contract.active else None
        self.generator = None
        if not self.greedy:
            import torch
            from transformers.generation.logits_process import (
                LogitsProcessorList,
                TemperatureLogitsWarper,
                TopPLogitsWarper,
            )

            warpers: list[Any] = [TemperatureLogitsWarper(float(settings.temperature))]
            if settings.top_p < 1.0:
                warpers.append(TopPLogitsWarper(float(settings.top_p)))
            self.warpers = LogitsProcessorList(warpers)
            self.generator = torch.Generator(device=device)
            if settings.seed is not None:
                self.generator.manual_seed(int(settings.seed))
            else:
                self.generator.seed()

    def _next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        if self.greedy:
            return torch.argmax(logits, dim=-1)
        scores = self.warpers(None, logits)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator).squeeze(1)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: Any) -> Any:
        import torch

        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, self.cache_kwarg: cache,
                                  "use_cache": True, "return_dict": True}
        if self.positions:
            kwargs["position_ids"] = positions
        if self.keep_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        return out.logits[:, -1, :].to(dtype=torch.float32, copy=True)

    def _hit_stop(self, tokens: list[int]) -> bool:
        tail = self.tokenizer.decode(tokens[-self.stop_window:], skip_special_tokens=True)
        return any(s in tail for s in self.stop)

    def _result(self, tokens: list[int], ended: bool) -> Generation:
        body = tokens[:-1] if tokens and tokens[-1] in self.eot else tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        text, stopped = truncate_at_stop(text, self.stop)
        return Generation(text=text, finish_reason="stop" if (ended or stopped) else "length",
                          output_tokens=len(tokens))

    def _prefill_rows(self, prompts: list[list[int]], width: int) -> tuple[torch.Tensor, Any] | None:
        """Prefill each prompt alone (batch 1, no padding: exactly the computation a lone ``generate``
        does) and stack the caches left-padded with zeros; None where the cache is not plain
        full-attention key/value layers (sliding windows, linear attention): prefill as a batch then."""
        import torch
        import torch.nn.functional as F
        import transformers.cache_utils as cache_utils
        from transformers import DynamicCache

        logits, caches = [], []
        for p in prompts:
            cache = DynamicCache(config=self.model.config)
            ids = torch.tensor([p], dtype=torch.long, device=self.device)
            positions = torch.arange(len(p), dtype=torch.long, device=self.device)[None, :]
            logits.append(self._forward(ids, None, positions, cache))
            layers = getattr(cache, "layers", None)
            if not layers or any(type(layer) is not getattr(cache_utils, "DynamicLayer", None) for layer in layers):
                return None
            caches.append(cache)
        merged = _new_cache(self.model.config, width + self.settings.max_new_tokens)
        for index in range(len(caches[0].layers)):
            keys = [F.pad(c.layers[index].keys, (0, 0, width - len(p), 0)) for c, p in zip(caches, prompts)]
            values = [F.pad(c.layers[index].values, (0, 0, width - len(p), 0)) for c, p in zip(caches, prompts)]
            merged.update(torch.cat(keys), torch.cat(values), index)
        return torch.cat(logits), merged

    def run(self, prompts: list[list[int]], report: Callable[[int, Generation], None], *,
            row_prefill: bool = True) -> None:
        """Decode `prompts` together; ``report(row, generation)`` as each one finishes.

        `row_prefill` prefills prompt by prompt (no compute spent on padding: what a CPU wants);
        otherwise the left-padded batch is prefilled in one forward pass (what a GPU wants).
        """
        import torch

        max_new = self.settings.max_new_tokens
        width = max(len(p) for p in prompts)
        n = len(prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, p in enumerate(prompts):
            if p:
                ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        attn: torch.Tensor | None = None if bool((mask == 1).all()) else mask
        live = list(range(n))  # batch rows still in the cache, in cache order
        generated: list[list[int] | None] = [[] for _ in range(n)]  # None once reported
        watches = [ContractWatch(self.contract) for _ in range(n)] if self.contract is not None else None
        with torch.inference_mode():
            rows = self._prefill_rows(prompts, width) if row_prefill and n > 1 and all(prompts) else None
            if rows is not None:
                logits, cache = rows
            else:
                cache = _new_cache(self.model.config, width + max_new)
                logits = self._forward(ids, attn, positions, cache)
            evict = _can_evict(cache)
            last = positions[:, -1:]
            while True:
                nxt = self._next_tokens(logits)
                values = nxt.tolist()
                keep: list[int] = []
                for j, row in enumerate(live):
                    tokens = generated[row]
                    if tokens is None:  # finished earlier, kept only because the cache cannot drop rows
                        keep.append(j)
                        continue
                    tokens.append(values[j])
                    ended = values[j] in self.eot
                    done = None
                    if ended or len(tokens) >= max_new or (self.stop and self._hit_stop(tokens)):
                        done = self._result(tokens, ended)
                    elif watches is not None:
                        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                        if not watches[row].alive(text):  # already wrong whatever follows: stop paying for it
                            done = Generation(text, "contract", len(tokens))
                    if done is not None:
                        report(row, done)
                        generated[row] = None
                        if evict:
                            continue
                    keep.append(j)
                if all(generated[row] is None for row in live):
                    return
                if len(keep) < len(live):
                    index = torch.tensor(keep, dtype=torch.long, device=nxt.device)
                    cache.batch_select_indices(index)
                    live = [live[j] for j in keep]
                    nxt, last = nxt[index], last[index]
                    if attn is not None:
                        attn = attn[index]
                if attn is not None:
                    attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=-1)
                last = last + 1
                logits = self._forward(nxt[:, None], attn, last, cache)


# =============================================================================================
# OpenAI-compatible endpoint

class EndpointBackend:
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama, OpenAI, ...).

    Requests go through `tunesmith.inference.openai_client.ChatClient`, the retry policy the teacher
    and the judge share: connection errors, timeouts, 408/409/425/429, 5xx and unreadable replies are
    retried up to `max_retries` times, waiting what Retry-After says, else `backoff` x 2^attempt seconds.
    Up to `concurrency` requests are in flight at once. A prompt that still fails, or fails with
    another 4xx, becomes ``Generation(text="", finish_reason="error", error=...)`` and the others carry on.

    The first prompt is sent alone: when nothing answers at the URL (connection refused through every
    retry), `generate` raises `EndpointError` before anything else is sent. A refused key (401/403) or
    an unknown model (404) raises `EndpointError` on any prompt: every other request would fail the same way.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 120, *, backoff: float = 0.5) -> None:
        if concurrency < 1:
            raise EndpointError(f"endpoint concurrency must be at least 1, got {concurrency}",
                                "Pass a concurrency of 1 or more.")
        if max_retries < 0:
            raise EndpointError(f"max_retries must be 0 or more, got {max_retries}", "Pass 0 or more retries.")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.fingerprint = _sha256("endpoint", self.base_url, model)
        # no request cache here: CachedBackend stores finished answers under this backend's fingerprint
        self.client = ChatClient(self.base_url, model, api_key=api_key, timeout=timeout,
                                 policy=RetryPolicy(max_retries=max_retries, backoff=backoff), what="endpoint")

    # -- one prompt ----------------------------------------------------------------------------

    def _request(self, chat: Chat, settings: DecodeSettings, stop: threading.Event | None = None) -> Generation:
        """One prompt's answer. Raises `EndpointError` on 401/403/404, `RequestFailed` when it failed for good."""
        params: dict[str, Any] = {"temperature": settings.temperature, "top_p": settings.top_p,
                                  "max_tokens": settings.max_new_tokens}
        if settings.seed is not None:
            params["seed"] = settings.seed
        try:
            reply = self.client.create(chat, stop=stop, stop_sequences=settings.stop, **params)
        except EndpointRefused as exc:
            raise self._refused(exc) from None
        text, stopped = truncate_at_stop(reply.content or "", settings.stop)
        reason = "length" if reply.finish_reason == "length" and not stopped else "stop"
        return Generation(text=text, finish_reason=reason, output_tokens=reply.completion_tokens)

    def _first(self, chat: Chat, settings: DecodeSettings) -> Generation:
        """The first prompt, sent alone: nothing listening at the URL stops the run before it starts."""
        try:
            return self._request(chat, settings)
        except RequestFailed as exc:
            if exc.unreachable:
                raise self._unreachable(exc.reason) from None
            return Generation("", "error", 0, error=exc.reason)

    def _one(self, chat: Chat, settings: DecodeSettings, stop: threading.Event) -> Generation:
        """A later prompt: its failure is its own error Generation, and the other prompts carry on."""
        try:
            return self._request(chat, settings, stop)
        except RequestFailed as exc:
            if stop.is_set():
                raise  # cut short because the run is stopping: no answer, rather than an error answer
            return Generation("", "error", 0, error=exc.reason)

    def _unreachable(self, reason: str) -> EndpointError:
        return EndpointError(f"{reason} (model {self.model!r})",
                             f"Is the server running at {self.base_url}? --endpoint must be its "
                             "OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1).")

    def _refused(self, exc: EndpointRefused) -> EndpointError:
        where = f"{self.base_url} (model {self.model!r})"
        if exc.status in (401, 403):
            return EndpointError(f"the endpoint {where} refused the API key (HTTP {exc.status})",
                                 "Set the key in OPENAI_API_KEY, or name the variable holding it with --api-key-env.")
        return EndpointError(f"the endpoint {where} answered HTTP {exc.status}: {exc.server_message}",
                             f"Check the model name (the server lists its models at {self.base_url}/models) and "
                             "that --endpoint is the OpenAI-compatible base URL (usually ending in /v1).")

    # -- many prompts --------------------------------------------------------------------------

    def generate(self, chats: list[Chat], settings: DecodeSettings, progress: Progress | None = None,
                 *, on_result: OnResult | None = None) -> list[Generation]:
        collector = _Results(len(chats), progress, on_result)
        if not chats:
            return []
        _check_settings(settings)
        collector.finish(0, self._first(chats[0], settings))
        rest = list(range(1, len(chats)))
        run_concurrently(rest, lambda i, stop: self._one(chats[i], settings, stop), concurrency=self.concurrency,
                         on_done=lambda k, gen: collector.finish(rest[k], gen))
        return collector.complete()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# =============================================================================================
# vLLM (optional)


def vllm_available() -> bool:
    """Whether the `vllm` package can be imported here (it is never a dependency)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


class VLLMBackend:
    """Offline vLLM (``vllm.LLM``), a LoRA adapter applied per request with ``LoRARequest``.

    Prompts are rendered with the same `render` as everywhere else and passed as token ids (so vLLM
    adds no second BOS); decoding stops at the model's end-of-turn ids and at the stop strings.
    """

    def __init__(self, model_path: Path | str, adapter_path: Path | str | None = None, *,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 **engine_kwargs: Any) -> None:
        if not vllm_available():
            raise ModelError("the vLLM backend needs the `vllm` package, which is not installed",
                             "Install it on a Linux machine with a CUDA GPU (pip install vllm), "
                             "or use the default transformers backend.")
        self.model_path = Path(model_path).expanduser().resolve()
        self.adapter_path = Path(adapter_path).expanduser().resolve() if adapter_path is not None else None
        # the same identity checks and tokenizer choice as the transformers backend
        local = LocalBackend(self.model_path, self.adapter_path, device="cpu", dtype="float32")
        self.tokenizer_path = local.tokenizer_path
        self._local = local
        self.fingerprint = _sha256("vllm", dtype, local.fingerprint)
        self._engine_kwargs = dict(dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                   max_model_len=max_model_len, **engine_kwargs)
        self._llm: Any = None

    @property
    def tokenizer(self) -> Any:
        return self._local.tokenizer

    def _engine(self) -> Any:
        if self._llm is None:
            from vllm import LLM

            kwargs = {k: v for k, v in self._engine_kwargs.items() if v is not None}
            if self.adapter_path is not None:
                config = json.loads((self.adapter_path / "adapter_config.json").read_text(encoding="utf-8"))
                kwargs.setdefault("enable_lora", True)
                kwargs.setdefault("max_lora_rank", max(8, int(config.get("r", 8))))
            try:
                self._llm = LLM(model=str(self.model_path), tokenizer=str(self.tokenizer_path), seed=0, **kwargs)
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"vLLM cannot load {self.model_path}: {_one_line(exc)}",
                                 "Use the default transformers backend for this model.") from exc
        return self._llm

    def generate(self, chats: list[Chat], settings: DecodeSettings, progress: Progress | None = None,
                 *, on_result: OnResult | None = None) -> list[Generation]:
        from vllm import SamplingParams

        from tunesmith.models.chat import end_of_turn_ids, prompt_ids

        if not chats:
            return []
        _check_settings(settings)
        tok = self.tokenizer
        ids = prompt_ids(tok, chats)
        params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                                max_tokens=settings.max_new_tokens, stop=list(settings.stop) or None,
                                seed=settings.seed, stop_token_ids=sorted(end_of_turn_ids(tok)),
                                skip_special_tokens=True)
        lora = None
        if self.adapter_path is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("tunesmith-adapter", 1, str(self.adapter_path))
        outputs = self._engine().generate([{"prompt_token_ids": p} for p in ids], params, lora_request=lora,
                                          use_tqdm=False)
        results: list[Generation] = []
        for index, out in enumerate(outputs):
            best = out.outputs[0]
            text, stopped = truncate_at_stop(best.text, settings.stop)
            reason = "length" if best.finish_reason == "length" and not stopped else "stop"
            gen = Generation(text=text, finish_reason=reason, output_tokens=len(best.token_ids))
            results.append(gen)
            if on_result is not None:
                on_result(index, gen)
            if progress is not None:
                progress(index + 1)
        return results
