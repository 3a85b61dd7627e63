"""`LocalBackend`: a transformers checkpoint (+ a LoRA adapter) answering chats on this machine.

Prompts are rendered with `tunesmith.models.chat.render`, the function training and serving use, so
the model is evaluated on the very prompt format it was trained on. Decoding follows `DecodeSettings`
and nothing else (OpenAI semantics): temperature 0 is greedy, otherwise temperature + top-p sampling;
no top-k and no repetition penalty, whatever the checkpoint's ``generation_config.json`` says, so the
same settings decode the same way on every backend.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError
from tunesmith.inference.backends import (
    Chat, OnResult, Progress, Results, check_settings, file_sha256, sha256_of,
)
from tunesmith.inference.loading import (
    auto_batch_size, available_memory, default_device, default_dtype, load_model,
)
from tunesmith.inference.types import DecodeSettings, Generation

#: files whose presence means a directory carries its own tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: files that decide how prompts are tokenised and rendered (hashed into the fingerprint)
_TOKENIZER_FINGERPRINT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                "chat_template.jinja", "chat_template.json", "tokenizer.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

#: extra tokens a constrained answer still open at its budget may take to close (see Sampling.close_within)
CLOSE_WITHIN = 48


class LocalBackend:
    """A transformers checkpoint (optionally + a PEFT LoRA adapter) answering on this machine.

    Nothing heavy happens in the constructor: paths are checked and the fingerprint is computed from
    file metadata and small files, so a fully cached evaluation never loads the model. The model is
    loaded on the first `generate` call that has something to generate. One exception: with
    ``quant="int8"`` the int8 kernel is chosen here (importing torch, and compiling tunesmith's kernel the
    first time on a machine, about 5 s), because which kernel answers is part of the fingerprint.

    Answers come from the decoding engine (`tunesmith.inference.engine`): prompts are sorted longest
    first and decoded with continuous batching, `batch_size` rows at most (None: `auto_batch_size` for
    the longest prompt), reusing the keys/values of the prompt prefix they share. `dtype` defaults to
    float32 on CPU, bfloat16 on a GPU. `DecodeSettings.constraint` is enforced with a grammar mask and
    `DecodeSettings.contract` is watched (an answer that broke it ends with finish_reason "contract").
    """

    #: answers are cut once they break `DecodeSettings.contract` (contract-aware stopping)
    honours_contract = True
    #: `DecodeSettings.constraint` is enforced at decode time
    honours_constraint = True
    #: reuse the keys/values of the prompt prefix consecutive prompts share (False: prefill every prompt whole)
    prefix_reuse = True

    def __init__(self, model_path: Path | str, adapter_path: Path | str | None = None,
                 batch_size: int | None = None, device: str | None = None, *, dtype: str | None = None,
                 quant: str | None = None) -> None:
        self.model_path = Path(model_path).expanduser().resolve()
        self.adapter_path = Path(adapter_path).expanduser().resolve() if adapter_path is not None else None
        if batch_size is not None and batch_size < 1:
            raise ModelError(f"batch size must be at least 1, got {batch_size}", "pass --batch-size 1 or more")
        self.batch_size = batch_size
        # int8 is a CPU kernel: on a machine with a GPU it still runs there unless a device is asked for
        self.device = device or ("cpu" if quant else default_device())
        self.dtype = dtype or default_dtype(self.device)
        #: None, or "int8": weight-only int8 (`inference.int8`), the adapter merged first; lossy
        self.quant = quant
        if quant is not None and quant != "int8":
            raise ModelError(f"quantisation {quant!r} is not one the transformers engine has",
                             "use int8 (weight-only), or --engine llamacpp for GGUF types")
        #: which int8 kernel multiplies (`int8_kernel`): its last-bit differences make it part of the fingerprint
        self.int8_kernel: str | None = None
        if quant == "int8":
            from tunesmith.inference.int8_kernel import kernel

            self.int8_kernel = kernel().name
        self._check_paths()
        self.tokenizer_path = (self.adapter_path if self.adapter_path is not None
                               and any((self.adapter_path / f).is_file() for f in _TOKENIZER_FILES)
                               else self.model_path)
        self.fingerprint = self._fingerprint()
        self._model: Any = None
        self._tokenizer: Any = None
        self._decoder: Any = None
        self._lock = threading.Lock()

    # -- identity ------------------------------------------------------------------------------

    def _check_paths(self) -> None:
        if not (self.model_path / "config.json").is_file():
            raise ModelError(f"{self.model_path} is not a model checkpoint directory: config.json is missing",
                             "point at a directory written by save_pretrained (config.json, weights, tokenizer)")
        if self.adapter_path is not None:
            if not (self.adapter_path / "adapter_config.json").is_file():
                raise ModelError(f"{self.adapter_path} is not a PEFT adapter directory: adapter_config.json is missing",
                                 "point at the adapter directory a training run wrote (runs/<id>/adapter)")
            if not self._adapter_weights():
                raise ModelError(f"{self.adapter_path} has no adapter weights (adapter_model.safetensors)",
                                 "the run may not have finished saving; resume or retrain it")

    def _adapter_weights(self) -> list[Path]:
        assert self.adapter_path is not None
        return [p for p in (self.adapter_path / "adapter_model.safetensors", self.adapter_path / "adapter_model.bin")
                if p.is_file()]

    def _fingerprint(self) -> str:
        """sha256 over: engine + dtype, the base checkpoint (path, config, weight files' size and mtime),
        the tokenizer and chat template files, and the adapter (config + weights, by content)."""
        parts: list[str | bytes] = ["transformers", self.dtype,
                                    *([f"quant:{self.quant}", f"kernel:{self.int8_kernel}"] if self.quant else []),
                                    str(self.model_path),
                                    (self.model_path / "config.json").read_bytes()]
        for f in sorted(self.model_path.iterdir()):
            if f.suffix in _WEIGHT_SUFFIXES and f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        parts.append(f"tokenizer:{self.tokenizer_path == self.adapter_path}")
        for name in _TOKENIZER_FINGERPRINT_FILES:
            f = self.tokenizer_path / name
            if f.is_file():
                parts += [name, file_sha256(f)]
        if self.adapter_path is not None:
            parts += ["adapter", (self.adapter_path / "adapter_config.json").read_bytes()]
            parts += [file_sha256(p) for p in self._adapter_weights()]
        return sha256_of(*parts)

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
        model = load_model(self.model_path, self.adapter_path, device=self.device, dtype=self.dtype)
        if self.quant == "int8":
            from tunesmith.inference.int8 import quantize_int8

            model = quantize_int8(model, self.device)
        return model

    def decoder(self) -> Any:
        """The `BatchDecoder` this backend answers with (one per backend: its prefix cache carries over)."""
        from tunesmith.inference.engine import BatchDecoder

        model = self.model
        with self._lock:
            if self._decoder is None:
                self._decoder = BatchDecoder(model, self.tokenizer, device=self.device,
                                             prefix_reuse=self.prefix_reuse)
        return self._decoder

    def check_constraint(self, settings: DecodeSettings) -> None:
        """Raise `GrammarError` (naming the feature) when `settings.constraint` cannot be enforced."""
        if settings.constraint is not None:
            self.decoder().grammar.check(settings.constraint)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, chats: list[Chat], settings: DecodeSettings, progress: Progress | None = None,
                 *, on_result: OnResult | None = None) -> list[Generation]:
        from tunesmith.inference.engine import Job, decode_all
        from tunesmith.inference.rows import Sampling
        from tunesmith.models.chat import prompt_ids

        if not chats:
            return []
        check_settings(settings)
        prompts = prompt_ids(self.tokenizer, chats)
        decoder = self.decoder()
        self.check_constraint(settings)
        collector = Results(len(chats), progress, on_result)
        failures: list[str] = []
        contract = settings.contract if settings.contract is not None and settings.contract.active else None
        sampling = Sampling(max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                            top_p=settings.top_p, seed=settings.seed, stop=tuple(settings.stop),
                            constraint=settings.constraint, contract=contract,
                            close_within=CLOSE_WITHIN if settings.constraint is not None else 0)
        # an int8 model has its adapter merged in: its rows name no adapter
        adapter = self.model.active_adapter if self.adapter_path is not None and not self.quant else None

        def emitter(index: int) -> Any:
            def emit(event: tuple[str, Any]) -> None:
                kind, value = event
                if kind == "done":
                    collector.finish(index, Generation(value.text, value.finish_reason, value.completion_tokens))
                elif kind == "error":
                    failures.append(value)
            return emit

        # Longest first: the batch is sized for its longest prompt, similar lengths share a batch (little
        # padding), and an out-of-memory shows up at the start, not the end.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        decoder.max_batch = self.batch_size or self._auto_batch(len(prompts[order[0]]), settings.max_new_tokens)
        decode_all(decoder, [Job(prompts[i], adapter, sampling, emitter(i), stream=False) for i in order])
        if failures:
            raise ModelError(failures[0], "this is a bug in the decoding engine or the model; please report it")
        return collector.complete()

    def _auto_batch(self, prompt_tokens: int, max_new_tokens: int) -> int:
        import torch

        config = getattr(self.model, "config", None)
        return auto_batch_size(config, prompt_tokens, max_new_tokens,
                               dtype_bytes=torch.finfo(getattr(torch, self.dtype)).bits // 8,
                               available_bytes=available_memory(self.device),
                               device_type=self.device.split(":")[0])
