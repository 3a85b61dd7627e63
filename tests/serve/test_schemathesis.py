"""`tunesmith serve` fuzzed from its own OpenAPI schema by schemathesis: a running server on a tiny model,
every operation with bodies that fit the schema and bodies that do not. No answer may be a 5xx, and
every error is in OpenAI's shape. The schema comes from `app.openapi()`: the server does not publish it."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from fixtures.serving import start

schemathesis = pytest.importorskip("schemathesis")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = 30  # per operation and mode (6 operations valid, 2 bodies invalid): ~15 s on one core


def assert_openai_error(response) -> None:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


@pytest.fixture(scope="module")
def schema_server(serve_base, serve_assets):
    running = start(serve_base, serve_assets, max_tokens=3, max_adapters=3,
                    adapters=[("alpha", str(serve_assets["alpha"]))])
    yield running
    running.stop()


def _operations(running):
    schema = schemathesis.openapi.from_dict(running.server.config.app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_describes_the_request_bodies(schema_server):
    labels = {op.label for op in _operations(schema_server)}
    assert {"POST /v1/chat/completions", "POST /v1/adapters", "DELETE /v1/adapters/{name}", "GET /v1/models"} <= labels
    components = schema_server.server.config.app.openapi()["components"]["schemas"]
    assert {"ChatRequest", "ChatMessage", "AdapterRequest"} <= set(components)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_a_5xx_or_an_error_in_another_shape(schema_server, mode):
    root = schema_server.url[: -len("/v1")]
    for operation in _operations(schema_server):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # only bodies can break the schema: a path parameter is any string

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case) -> None:
            response = case.call(base_url=root, timeout=60)
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400:
                assert_openai_error(response)
            if operation.label == "POST /v1/adapters" and response.status_code == 201:
                httpx.delete(f"{root}/v1/adapters/{response.json()['id']}", timeout=60)

        run()
    # the generated requests left the server as it was, and serving
    assert [m["id"] for m in httpx.get(root + "/v1/models", timeout=60).json()["data"]][1:] == ["alpha"]
    chat = httpx.post(root + "/v1/chat/completions", timeout=60,
                      json={"model": "alpha", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200, chat.text
