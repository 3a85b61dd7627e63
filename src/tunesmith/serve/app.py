"""The OpenAI-compatible HTTP API (FastAPI): chat completions, models, and adapter hot-swap.

Handlers never touch the model: they validate, render the chat with the base model's template, and
hand a job to the `Engine`, whose worker thread streams events back through an asyncio queue.
FastAPI is imported at module level because it resolves the handlers' annotations; only
`tunesmith serve` imports this module.

``response_format`` follows OpenAI's wire format: ``{"type": "text"}``, ``{"type": "json_object"}`` (any
JSON object) and ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``.
The answer is constrained token by token (a grammar mask, `tunesmith.inference.grammar`), so it cannot
break the format. A schema feature the grammar engine does not support is a 400 that names it, checked
before the request reaches the engine: never an unconstrained answer, never a failing batch.
``finish_reason`` is OpenAI's "stop" or "length", or tunesmith's extension "grammar": the grammar allowed
no next token (rare: a schema that cannot be satisfied is refused up front, so this is where the grammar
engine and Python's JSON Schema check disagree, e.g. a regex dialect difference), and the answer ends
with what it has; the other requests in the batch are not affected.
A constrained answer the model has not ended 16 tokens before its max_tokens (half of them for small
limits) is steered to a close there, so it still parses (best effort); it finishes "length".
``usage.prompt_tokens_details.cached_tokens`` counts the prompt tokens whose keys and values came
from the engine's shared-prefix cache, as OpenAI reports its prompt caching.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import TunesmithError
from tunesmith.inference.constraints import Constraint
from tunesmith.inference.engine import Finished, Job, Sampling
from tunesmith.inference.worker import Engine, EngineClosed
from tunesmith.serve.adapters import (
    DEFAULT_MAX_ADAPTERS, AdapterInfo, AdapterLocator, ServedBase, check_name, check_shapes,
)
from tunesmith.serve.errors import (
    AdapterRejected, BadRequest, Conflict, CrossOrigin, HostNotAllowed, NotFound, ServeError, ServerFailure, TooLarge,
    TooManyAdapters, Unauthorized, Unavailable, UnsupportedMediaType, error_body,
)
from tunesmith.serve.formats import close_reserve, response_constraint
from tunesmith.serve.schemas import AdapterRequest, ChatRequest
from tunesmith.web_guard import Problem, WebGuard, allowed_hosts, check_request, host_name

# -- limits and state ------------------------------------------------------------------------------


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_tokens: int = 2048
    context: int = 2048
    max_adapters: int = DEFAULT_MAX_ADAPTERS


@dataclass
class ServerState:
    engine: Engine
    tokenizer: Any
    base: ServedBase
    locator: AdapterLocator
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: the Host names served (web_guard.allowed_hosts); None on all interfaces, where a key guards instead
    hosts: frozenset[str] | None = field(default_factory=lambda: allowed_hosts("127.0.0.1"))
    apply_system_prompt: bool = True
    adapters: dict[str, AdapterInfo] = field(default_factory=dict)
    unloading: set[str] = field(default_factory=set)
    lock: asyncio.Lock | None = None
    #: the engine's `GrammarCompiler`, once a constrained request has asked for it (see `check_constraint`)
    grammar: Any = None
    #: why this model cannot have one (its tokenizer), once known: not retried at every request
    no_grammar: ServeError | None = None

    # -- adapters (model edits run on the engine thread) -----------------------------------------

    def load_adapter_sync(self, name: str, source: str) -> AdapterInfo:
        """Validate and load an adapter; blocks until the engine thread has loaded it."""
        check_name(name, self.base)
        if name in self.adapters:
            raise Conflict(f"adapter {name!r} is already loaded", "unload it first (DELETE /v1/adapters/NAME)",
                           param="name")
        cap = self.limits.max_adapters
        if len(self.adapters) >= cap:
            raise TooManyAdapters(f"{len(self.adapters)} adapters are loaded, the most this server holds "
                                  f"(--max-adapters {cap})", "unload one with DELETE /v1/adapters/NAME, or restart "
                                  "the server with a higher --max-adapters", param="name")
        path, run_id = self.locator.locate(source)
        trained_on, system_prompt = self.locator.inspect(path, run_id)
        info = AdapterInfo(name, path, source, run_id, trained_on, system_prompt, shown=self.locator.display(path))
        try:
            self.engine.call(lambda: self._load_on_engine(info)).result(timeout=600)
        except (ServeError, EngineClosed):
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged or odd adapter: refused, the server goes on
            raise AdapterRejected(f"cannot load adapter {info.shown}: {type(exc).__name__}: "
                                  f"{self.locator.scrub(str(exc))}",
                                  "check that it is a complete PEFT LoRA adapter saved with save_pretrained",
                                  param="source") from exc
        return info  # the caller records it (on the event loop, where the dict is read)

    async def check_constraint(self, constraint: Constraint) -> None:
        """A `BadRequest` naming what the grammar engine cannot enforce, before the job reaches the engine
        (a schema that does not compile must not fail inside the decoding loop). Off the event loop;
        the compiled grammar is cached, so the engine does not compile it again."""
        if self.no_grammar is not None:
            raise self.no_grammar
        if self.grammar is None:
            # built on the engine thread: the compiler reads the model, which adapter loads replace
            engine = self.engine
            try:
                self.grammar = await asyncio.wrap_future(engine.call(lambda: engine.grammar, edits_model=False))
            except EngineClosed as exc:
                raise Unavailable(exc.message, exc.hint) from exc
            except Exception as exc:  # noqa: BLE001 - a tokenizer the grammar engine cannot use
                detail = exc.message if isinstance(exc, TunesmithError) else f"{type(exc).__name__}: {exc}"
                self.no_grammar = BadRequest(f"response_format: this model cannot decode under a grammar ({detail})",
                                             "leave response_format out, or serve with --engine vllm",
                                             param="response_format", code="unsupported_parameter")
                raise self.no_grammar from exc
        try:
            await asyncio.to_thread(self.grammar.check, constraint)
        except TunesmithError as exc:  # GrammarError: the message names the schema feature
            # not its hint, which speaks of evaluation's flags
            raise BadRequest(exc.message, "change the schema, or leave response_format out for a free answer",
                             param="response_format") from exc
        except Exception as exc:  # noqa: BLE001 - e.g. a schema nested past the recursion limit
            raise BadRequest(f"response_format: the schema cannot be compiled into a grammar: "
                             f"{type(exc).__name__}: {exc}", "simplify the schema", param="response_format") from exc

    def _load_on_engine(self, info: AdapterInfo) -> None:
        from peft import PeftModel

        engine = self.engine
        check_shapes(engine.model, info.path, info.shown)
        if isinstance(engine.model, PeftModel):
            model = engine.model
            model.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(engine.model, str(info.path), adapter_name=info.name,
                                              is_trainable=False)
        # in eval mode first, then set (again): the decoder re-decides its lean step, whose projections
        # hold the LoRA layers they saw (an adapter on other modules wraps new ones; DoRA needs PEFT's forward)
        model.eval()
        engine.model = model

    def _unload_on_engine(self, name: str) -> bool:
        """False while rows of `name` are still decoding (the caller retries)."""
        engine = self.engine
        if name in engine.active_adapters():
            return False
        model = engine.model
        if len(model.peft_config) == 1:
            # PEFT keeps no adapter-less PeftModel: take the LoRA layers out, back to the plain base
            model = model.unload()
        else:
            model.delete_adapter(name)
        model.eval()
        engine.model = model  # the decoder re-decides its lean step
        return True


# -- the app ---------------------------------------------------------------------------------------


def create_app(state: ServerState, on_shutdown: Callable[[], None] | None = None) -> Any:
    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    app = FastAPI(title="tunesmith", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    _document_bodies(app)
    app.state.tunesmith = state
    state.lock = asyncio.Lock()

    @app.exception_handler(ServeError)
    async def _serve_error(_request: Request, exc: ServeError) -> JSONResponse:
        return _ErrorResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return _ErrorResponse(error_body(str(exc.detail), "invalid_request_error", None, code),
                              status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        # a bug, not a bad request: still an answer the OpenAI clients can read (the log has the traceback)
        return _ErrorResponse(error_body(f"internal error: {type(exc).__name__}", "server_error", None,
                                         "internal_error"), status_code=500)

    app.add_middleware(WebGuard, problem=_guard(state))

    async def _json_body(request: Request) -> Any:
        body = bytearray()
        async for chunk in request.stream():  # read up to the limit, not the whole body first
            body += chunk
            if len(body) > state.limits.max_body_bytes:
                raise TooLarge(f"request body is over the limit of {state.limits.max_body_bytes} bytes",
                               "send a smaller request")
        try:
            return json.loads(bytes(body) or b"null")
        except ValueError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}", "send a JSON object") from exc
        except RecursionError:
            raise BadRequest("the request body nests JSON too deeply", "send a JSON object of ordinary depth") from None

    def _parse(model: type[BaseModel], data: Any, api: str = "the OpenAI chat completions API") -> Any:
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object", "send a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise BadRequest(f"{param}: {first['msg']}" if param else first["msg"],
                             f"see {api} for the field", param=param) from exc

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        base = {"id": state.base.name, "object": "model", "created": state.base.created, "owned_by": "tunesmith",
                "root": state.base.public_ref(), "parent": None}
        data = [base] + [a.to_dict() | {"parent": state.base.name} for a in state.adapters.values()
                         if a.name not in state.unloading]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if not name:  # "/v1/models/": the list, not a model called ""
            return await models()
        listed = (await models())["data"]
        if name in state.base.aliases():  # the names a chat request may use for the base
            return listed[0] | {"id": name}
        for m in listed:
            if m["id"] == name:
                return m
        raise NotFound(f"the model {name!r} does not exist", _known(state), param="model")

    @app.post("/v1/adapters", status_code=201, openapi_extra=_body_doc(AdapterRequest))
    async def load_adapter(request: Request) -> dict[str, Any]:
        req = _parse(AdapterRequest, await _json_body(request), 'POST /v1/adapters {"name", "source"}')
        source = req.source or req.path
        if not source:
            raise BadRequest("give the adapter's source: a run id of the project or an adapter directory",
                             'send {"name": "...", "source": "RUN_OR_DIR"}', param="source")
        assert state.lock is not None
        async with state.lock:  # one adapter edit at a time
            try:
                info = await asyncio.to_thread(state.load_adapter_sync, req.name, source)
            except EngineClosed as exc:
                raise Unavailable(exc.message, exc.hint) from exc
            state.adapters[info.name] = info
        return info.to_dict() | {"parent": state.base.name}

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        assert state.lock is not None
        async with state.lock:
            if name in state.base.aliases():
                raise BadRequest(f"{name!r} is the base model, which cannot be unloaded",
                                 "DELETE /v1/adapters/NAME unloads an adapter; stop the server to free the base",
                                 param="name")
            if name not in state.adapters:
                raise NotFound(f"no adapter {name!r} is loaded", _known(state), param="name")
            state.unloading.add(name)  # new requests for it get a 404 from now on
            try:
                while not await asyncio.wrap_future(state.engine.call(lambda: state._unload_on_engine(name))):
                    await asyncio.sleep(0.05)  # its requests in flight finish first
                del state.adapters[name]
            except EngineClosed as exc:
                raise Unavailable(exc.message, exc.hint) from exc
            finally:
                state.unloading.discard(name)
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/chat/completions", openapi_extra=_body_doc(ChatRequest))
    async def chat_completions(request: Request) -> Any:
        req: ChatRequest = _parse(ChatRequest, await _json_body(request))
        problem = req.unsupported()
        if problem:
            raise BadRequest(f"{problem[0]}: {problem[1]}", param=problem[0], code="unsupported_parameter")
        constraint = response_constraint(req.response_format)
        adapter, system_prompt = _target(state, req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        if system_prompt and state.apply_system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        prompt_ids = _encode(state.tokenizer, messages)
        room = state.limits.context - len(prompt_ids)
        if room < 1:
            raise BadRequest(f"the prompt is {len(prompt_ids)} tokens; this model's context is {state.limits.context}",
                             "shorten the conversation", param="messages", code="context_length_exceeded")
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > state.limits.max_tokens:
            raise BadRequest(f"max_tokens {asked} is over this server's limit of {state.limits.max_tokens}",
                             "ask for fewer tokens", param="max_tokens")
        max_tokens = min(asked or state.limits.max_tokens, room)
        if constraint is not None:
            await state.check_constraint(constraint)
        sampling = Sampling(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                            stop=tuple(req.stop or ()), min_tokens=min(req.min_tokens, max_tokens),
                            constraint=constraint, close_reserve=close_reserve(max_tokens) if constraint else 0)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(event: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(prompt_ids, adapter, sampling, emit, stream=req.stream)
        try:
            state.engine.submit(job)
        except EngineClosed as exc:
            raise Unavailable(exc.message, exc.hint) from exc
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(job, events, rid, created, req.model, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(request, job, events, rid, created, req.model)

    return app


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The requestBody of a route that reads its body itself (to bound its size and answer in OpenAI's
    error shape), which FastAPI therefore cannot describe."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _document_bodies(app: Any) -> None:
    """`app.openapi()` (not served: openapi_url is None) with the request models in its components, so
    schema-driven tests (schemathesis) generate real bodies."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # cached on app.openapi_schema: completed in place once
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ChatRequest, AdapterRequest):
                doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(doc.pop("$defs", {}))
                schemas[model.__name__] = doc
        return app.openapi_schema

    app.openapi = openapi


class _ErrorResponse(JSONResponse):
    """An error body in ASCII: a message quoting a lone surrogate from the request still encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _guard(state: ServerState) -> Problem:
    """Web-page rules (tunesmith.web_guard), then API key and declared body size, checked before any route;
    /health answers every client that passes the web-page rules."""

    def problem(method: str, headers: dict[str, str], path: str) -> _ErrorResponse | None:
        found = _web_problem(state.hosts, method, headers)
        if found is None and path != "/health":
            found = _client_problem(state, headers)
        return None if found is None else _ErrorResponse(found.body(), status_code=found.status)

    return problem


def _web_problem(allowed: frozenset[str] | None, method: str, headers: dict[str, str]) -> ServeError | None:
    """Another web site's request (DNS rebinding, CSRF), refused in OpenAI's error shape."""
    host = headers.get("host")
    # every POST route reads a JSON body; DELETE and GET read none
    refusal = check_request(method=method, host=host, origin=headers.get("origin"),
                            content_type=headers.get("content-type"), allowed=allowed, json_body=method == "POST")
    if refusal is None:
        return None
    if refusal.status == 415:
        return UnsupportedMediaType(refusal.message)
    if allowed is not None and host_name(host) not in allowed:
        return HostNotAllowed(refusal.message)
    return CrossOrigin(refusal.message)


def _client_problem(state: ServerState, headers: dict[str, str]) -> ServeError | None:
    if state.api_key:
        given = headers.get("authorization", "")
        token = given[7:].strip() if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), state.api_key.encode()):
            return Unauthorized("missing or wrong API key",
                                "send 'Authorization: Bearer KEY' with the key the server was started with")
    length, limit = headers.get("content-length", ""), state.limits.max_body_bytes
    if length.isdigit() and int(length) > limit:
        return TooLarge(f"request body of {int(length)} bytes is over the limit of {limit}", "send a smaller request")
    return None


def _known(state: ServerState) -> str:
    names = [state.base.name] + [n for n in state.adapters if n not in state.unloading]
    return "loaded models: " + ", ".join(names)


def _target(state: ServerState, name: str) -> tuple[str | None, str | None]:
    """(adapter name or None for the base, the system prompt to apply when the request has none)."""
    if name in state.base.aliases():
        return None, state.base.system_prompt
    info = state.adapters.get(name)
    if info is None or name in state.unloading:
        raise NotFound(f"the model {name!r} does not exist", _known(state), param="model")
    # the prompt of the run that trained it; an adapter from elsewhere never saw the project's prompt
    return name, info.system_prompt


def _encode(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    from tunesmith.models.chat import prompt_ids

    try:
        return prompt_ids(tokenizer, [messages])[0]
    except Exception as exc:  # noqa: BLE001 - a template that refuses this conversation
        raise BadRequest(f"the chat template cannot render these messages: {exc}",
                         "check the roles and their order", param="messages") from exc


def _usage(done: Finished) -> dict[str, Any]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}


async def _complete(request: Any, job: Job, events: asyncio.Queue[tuple[str, Any]], rid: str, created: int,
                    model: str) -> dict[str, Any]:
    async def watch() -> None:  # a client that hangs up frees its place in the batch
        while not job.cancelled.is_set():
            if await request.is_disconnected():
                job.cancelled.set()
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    try:
        while True:
            kind, value = await events.get()
            if kind == "cancelled":  # the client hung up: nobody will read an answer
                return {}
            if kind == "error":
                raise Unavailable(value) if "shut" in value else ServerFailure(value)
            if kind == "done":
                done: Finished = value
                return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                        "system_fingerprint": None,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                                     "logprobs": None, "finish_reason": done.finish_reason}],
                        "usage": _usage(done)}
    finally:
        job.cancelled.set()
        watcher.cancel()


def _chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> str:
    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _stream(job: Job, events: asyncio.Queue[tuple[str, Any]], rid: str, created: int, model: str,
                  include_usage: bool) -> AsyncIterator[str]:
    try:
        yield _chunk(rid, created, model, {"role": "assistant", "content": ""}, None)
        while True:
            kind, value = await events.get()
            if kind == "delta":
                yield _chunk(rid, created, model, {"content": value}, None)
            elif kind == "error":
                yield f"data: {json.dumps(error_body(value, 'server_error', None, 'generation_failed'))}\n\n"
                break
            else:
                done: Finished = value
                yield _chunk(rid, created, model, {}, done.finish_reason)
                if include_usage:
                    body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [], "usage": _usage(done)}
                    yield f"data: {json.dumps(body)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client went away (or we are done): the engine drops the row

