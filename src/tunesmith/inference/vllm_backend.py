"""`VLLMBackend`: offline vLLM, only where ``vllm`` is installed (`vllm_available`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError, one_line
from tunesmith.inference.backends import Chat, OnResult, Progress, check_settings, sha256_of, truncate_at_stop
from tunesmith.inference.constraints import JSON_ANY, JSON_OBJECT, JSON_SCHEMA, REGEX, Constraint
from tunesmith.inference.local import LocalBackend
from tunesmith.inference.types import DecodeSettings, Generation


def vllm_available() -> bool:
    """Whether the `vllm` package can be imported here (it is never a dependency)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def structured_output(constraint: Constraint | None) -> dict[str, Any]:
    """`constraint` as vLLM's SamplingParams take it: ``structured_outputs=`` (vLLM >= 0.10.2), else the
    ``guided_decoding=`` of earlier releases (removed in 0.12). vLLM compiles it with xgrammar or guidance."""
    if constraint is None:
        return {}
    fields: dict[str, Any] = {"json_object": True} if constraint.kind == JSON_OBJECT else {}
    if constraint.kind == JSON_SCHEMA:
        fields["json"] = constraint.schema_dict
    elif constraint.kind == REGEX:
        fields["regex"] = constraint.pattern
    elif constraint.kind == JSON_ANY:  # an object or an array
        fields["json"] = {"anyOf": [{"type": "object"}, {"type": "array"}]}
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(**fields)}
    except ImportError:  # pragma: no cover - vLLM before 0.10.2
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(**fields)}


class VLLMBackend:
    """Offline vLLM (``vllm.LLM``), a LoRA adapter applied per request with ``LoRARequest``.

    Prompts are rendered with the same `render` as everywhere else and passed as token ids (so vLLM
    adds no second BOS); decoding stops at the model's end-of-turn ids and at the stop strings.
    `DecodeSettings.constraint` goes to vLLM's own structured outputs.
    """

    honours_constraint = True

    def __init__(self, model_path: Path | str, adapter_path: Path | str | None = None, *,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 **engine_kwargs: Any) -> None:
        if not vllm_available():
            raise ModelError("the vLLM backend needs the `vllm` package, which is not installed",
                             "install it on a Linux machine with a CUDA GPU (pip install vllm), "
                             "or use the default transformers backend")
        self.model_path = Path(model_path).expanduser().resolve()
        self.adapter_path = Path(adapter_path).expanduser().resolve() if adapter_path is not None else None
        # the same identity checks and tokenizer choice as the transformers backend
        local = LocalBackend(self.model_path, self.adapter_path, device="cpu", dtype="float32")
        self.tokenizer_path = local.tokenizer_path
        self._local = local
        self.fingerprint = sha256_of("vllm", dtype, local.fingerprint)
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
                raise ModelError(f"vLLM cannot load {self.model_path}: {one_line(exc)}",
                                 "use the default transformers backend for this model") from exc
        return self._llm

    def generate(self, chats: list[Chat], settings: DecodeSettings, progress: Progress | None = None,
                 *, on_result: OnResult | None = None) -> list[Generation]:
        from vllm import SamplingParams

        from tunesmith.models.chat import end_of_turn_ids, prompt_ids

        if not chats:
            return []
        check_settings(settings)
        tok = self.tokenizer
        ids = prompt_ids(tok, chats)
        params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                                max_tokens=settings.max_new_tokens, stop=list(settings.stop) or None,
                                seed=settings.seed, stop_token_ids=sorted(end_of_turn_ids(tok)),
                                skip_special_tokens=True, **structured_output(settings.constraint))
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
