"""The generation backends evaluation uses; they live in `tunesmith.inference` (one engine for eval,
serve and ship). Kept so ``from tunesmith.evaluate.generate import LocalBackend`` goes on working.

* `LocalBackend`    -- transformers on this machine through the decoding engine (`inference.local`);
* `EndpointBackend` -- any OpenAI-compatible chat-completions server (`inference.endpoint`);
* `VLLMBackend`     -- offline vLLM where it is installed (`inference.vllm_backend`).
"""

from __future__ import annotations

from tunesmith.inference.backends import Backend, truncate_at_stop
from tunesmith.inference.endpoint import EndpointBackend, EndpointError
from tunesmith.inference.loading import auto_batch_size
from tunesmith.inference.local import LocalBackend
from tunesmith.inference.vllm_backend import VLLMBackend, vllm_available

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
