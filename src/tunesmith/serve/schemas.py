"""The request bodies of the OpenAI-compatible API (pydantic): lenient like OpenAI's, which ignores unknown
fields and takes null for "the default"; what this server cannot do is named by `ChatRequest.unsupported`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunesmith.serve.errors import BadRequest


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise BadRequest(f"content part of type {part.type!r} is not supported", "send text parts only",
                                 param="messages")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    min_tokens: int = Field(0, ge=0)  # vLLM's extension: no end-of-turn before this many tokens
    # accepted when they ask for nothing: sent by some clients with their defaults
    frequency_penalty: float | None = 0
    presence_penalty: float | None = 0
    logprobs: bool | None = False
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    top_k: int | None = None  # vLLM's extension
    repetition_penalty: float | None = None  # vLLM's extension

    @model_validator(mode="before")
    @classmethod
    def _nulls_mean_defaults(cls, data: Any) -> Any:
        # OpenAI's API takes null for "the default"; some clients send it explicitly
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in ("model", "messages")}
        return data

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s]

    def unsupported(self) -> tuple[str, str] | None:
        if self.n != 1:
            return "n", "only n=1 is supported; send separate requests"
        if self.tools or self.functions:
            return "tools", "tool calling is not supported by this server"
        if self.logprobs:
            return "logprobs", "logprobs are not supported by this server"
        if self.frequency_penalty or self.presence_penalty:
            return "frequency_penalty", "frequency and presence penalties are not supported; leave them at 0"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported by this server"
        if self.top_k not in (None, 0, -1):
            return "top_k", "top_k is not supported; use top_p"
        if self.repetition_penalty not in (None, 1.0):
            return "repetition_penalty", "repetition_penalty is not supported; leave it at 1.0"
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed when stream is true"
        return None


class AdapterRequest(_Lenient):
    name: str
    source: str | None = None
    path: str | None = None  # alias of source
