"""The request bodies of the OpenAI-compatible API, validated without a server or a model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tunesmith.serve.errors import BadRequest
from tunesmith.serve.schemas import AdapterRequest, ChatMessage, ChatRequest


def test_a_chat_request_takes_nulls_as_defaults_and_ignores_unknown_fields():
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                      "top_p": None, "n": None, "stop": "", "user": "someone"})
    assert (req.top_p, req.n, req.stop, req.unsupported()) == (1.0, 1, [], None)
    assert ChatRequest.model_validate({"model": "m", "messages": [{"role": "user"}], "n": 2}).unsupported()[0] == "n"
    with pytest.raises(ValidationError, match="at most 4 stop sequences"):
        ChatRequest.model_validate({"model": "m", "messages": [{"role": "user"}], "stop": list("abcde")})


def test_message_text_joins_text_parts_and_refuses_others():
    parts = ChatMessage.model_validate({"role": "user", "content": [{"type": "text", "text": "a"},
                                                                    {"type": "text", "text": "b"}]})
    assert parts.text() == "ab" and ChatMessage(role="assistant").text() == ""
    image = ChatMessage.model_validate({"role": "user", "content": [{"type": "image_url"}]})
    with pytest.raises(BadRequest, match="content part of type 'image_url' is not supported"):
        image.text()
    assert AdapterRequest.model_validate({"name": "a", "path": "/x"}).path == "/x"
