"""Build and run `tunesmith serve`: one base model, adapters by name, an OpenAI-compatible API."""

from __future__ import annotations

import errno
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError, TunesmithError, UsageError
from tunesmith.progress import Say
from tunesmith.serve.adapters import DEFAULT_MAX_ADAPTERS

API_KEY_ENV = "TUNESMITH_API_KEY"
ENGINES = ("transformers", "vllm", "llamacpp")
ENGINE_HINT = "use --engine transformers, --engine vllm or --engine llamacpp"


@dataclass
class ServeConfig:
    project_dir: Path | None = None
    base: str | None = None  # default: the project's base model
    adapters: list[tuple[str, str]] = field(default_factory=list)  # (name, run id or directory)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    #: serve all interfaces without a key: the operator said so in words (--insecure-no-auth)
    insecure_no_auth: bool = False
    allow_dirs: list[Path] = field(default_factory=list)
    #: more Host names to answer to (a reverse proxy's), besides the bound address
    allow_hosts: list[str] = field(default_factory=list)
    max_adapters: int = DEFAULT_MAX_ADAPTERS
    max_batch: int | None = None  # default: 16 on CPU, 64 on a GPU
    max_tokens: int = 2048
    max_body_bytes: int = 1 << 20
    device: str | None = None
    apply_system_prompt: bool = True
    engine: str = "transformers"  # or "vllm", or "llamacpp" (one GGUF file: the base's, or one run's)
    #: with engine "llamacpp": the GGUF export served (f16 default; q4_1: the builtin model's own file)
    quant: str | None = None
    #: with engine "llamacpp": the base's GGUF with each adapter as a GGUF LoRA adapter, hot-swapped per
    #: request (``--gguf-adapter``), instead of one run's merged export
    gguf_adapters: bool = False
    grace_s: float = 15.0


def parse_adapter_flag(value: str) -> tuple[str, str]:
    """NAME=RUN_OR_PATH, or a bare RUN_OR_PATH (named after the run id or directory)."""
    if "=" in value:
        name, _, source = value.partition("=")
        if not name or not source:
            raise UsageError(f"--adapter {value!r}: expected NAME=RUN_OR_PATH", "e.g. --adapter sql=latest")
        return name.strip(), source.strip()
    source = value.strip()
    if not source:
        raise UsageError("--adapter needs a value", "e.g. --adapter sql=latest")
    return Path(source.rstrip("/")).name if "/" in source else source, source


def read_api_key(key: str | None, key_file: Path | None, env: str | None) -> str | None:
    """The API key from --api-key, --api-key-file or the environment (in that order; the flag shows in `ps`)."""
    if key and key_file is not None:
        raise UsageError("--api-key and --api-key-file both given", "keep --api-key-file (the other shows in ps)")
    if key_file is None:
        return key or env or None
    try:
        text = key_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--api-key-file {key_file}: no such file",
                         "write the key into it (one line), or point at the file that holds it") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UsageError(f"--api-key-file {key_file}: cannot read it ({reason})",
                         "give a readable text file holding the key") from None
    if not text.strip():
        raise UsageError(f"--api-key-file {key_file} is empty", "write the key into it (one line)")
    return text.strip()


def _load_project(config: ServeConfig) -> Any | None:
    from tunesmith.project import load_project

    if config.project_dir is None:
        return None
    if not (Path(config.project_dir) / "tunesmith.yaml").is_file():
        if config.base is None:
            raise UsageError(f"{config.project_dir} has no tunesmith.yaml and no --base was given",
                             "run from a project directory (--project DIR) or name the model: --base builtin:smollm2-135m-instruct")
        return None
    return load_project(config.project_dir)


def require_serving_libraries(what: str = "tunesmith serve") -> None:
    """FastAPI and uvicorn come with the `serve` extra; say how to get them instead of a traceback.
    `what` names the command that needs them (serve, the review page)."""
    import importlib

    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"{what} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         "not installed", "pip install 'tunesmith[serve]'")


def _served_base(config: ServeConfig) -> tuple[Any, Any]:
    """(the project or None, the ServedBase): the base model both engines serve, and its name."""
    from tunesmith.models.resolve import resolve_model
    from tunesmith.serve.adapters import ServedBase

    project = _load_project(config)
    ref = config.base or (project.base_model if project is not None else None)
    if ref is None:
        raise UsageError("no base model: give --base or serve from a project", "e.g. --base builtin:smollm2-135m-instruct")
    resolved = resolve_model(ref)
    name = ref.split(":", 1)[1] if ref.startswith("builtin:") else Path(ref.rstrip("/")).name or ref
    return project, ServedBase(ref=ref, path=resolved.path, name=name,
                               system_prompt=project.system_prompt if project is not None else None)


def build_state(config: ServeConfig, say: Say | None = None) -> Any:
    """Load the base model and the start-up adapters; the returned ServerState backs `create_app`."""
    require_serving_libraries()
    say = say or (lambda _m: None)
    if len(config.adapters) > config.max_adapters:
        raise UsageError(f"{len(config.adapters)} adapters given with --adapter, but --max-adapters is "
                         f"{config.max_adapters}", f"raise it: --max-adapters {len(config.adapters)}")
    from tunesmith.inference.worker import Engine
    from tunesmith.inference.loading import default_device, default_dtype, load_model
    from tunesmith.models.resolve import tokenizer_in
    from tunesmith.serve.app import ServerState

    _check_gguf_adapters(config)
    if config.engine == "llamacpp":
        return _llamacpp_state(config, say)
    if config.quant is not None:
        return _int8_state(config, say)
    project, base = _served_base(config)
    device = config.device or default_device()
    say(f"loading {base.ref} on {device}")
    model = load_model(Path(base.path), None, device=device, dtype=default_dtype(device))
    tokenizer = tokenizer_in(base.path)
    if project is not None:  # train.chat_template: render prompts the way the project's runs were trained
        from tunesmith.models.chat_template import apply_project_template

        apply_project_template(tokenizer, project)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    engine = Engine(model, tokenizer, device=device, max_batch=config.max_batch or (16 if device == "cpu" else 64))
    return _hot_swap_state(ServerState, config, engine, tokenizer, base, project, context, say)


def _hot_swap_state(state_class: type, config: ServeConfig, engine: Any, tokenizer: Any, served: Any, project: Any,
                    context: int, say: Say, *, loaded_as: str = "") -> Any:
    """A `state_class` server that hot-swaps adapters, with the --adapter flags loaded (the engine closed
    again when one of them fails)."""
    from tunesmith.serve.adapters import AdapterLocator
    from tunesmith.serve.app import Limits
    from tunesmith.web_guard import allowed_hosts

    locator = AdapterLocator(served, project=project, allowed_dirs=list(config.allow_dirs))
    state = state_class(engine, tokenizer, served, locator, api_key=config.api_key,
                        limits=Limits(config.max_body_bytes, min(config.max_tokens, context), context,
                                      config.max_adapters),
                        hosts=allowed_hosts(config.host, config.allow_hosts),
                        apply_system_prompt=config.apply_system_prompt)
    try:
        for adapter_name, source in config.adapters:
            info = state.load_adapter_sync(adapter_name, source)
            state.adapters[info.name] = info
            say(f"adapter {info.name} <- {info.path}{loaded_as}")
    except BaseException:
        engine.close(0)
        raise
    return state


def _check_gguf_adapters(config: ServeConfig) -> None:
    if config.gguf_adapters and config.engine != "llamacpp":
        raise UsageError(f"--gguf-adapter is for --engine llamacpp, and this server's engine is {config.engine}",
                         "add --engine llamacpp, or leave --gguf-adapter out (the transformers engine hot-swaps "
                         "PEFT adapters itself)")


def _refusal(why: str, served: Any, hint: str) -> Callable[[], Exception]:
    from tunesmith.serve.errors import AdapterRejected

    return lambda: AdapterRejected(f"{why} serves one model ({served.name}) and cannot load adapters", hint,
                                   param="source")


def _one_model_state(config: ServeConfig, engine: Any, tokenizer: Any, served: Any, project: Any, context: int,
                     refusal: Callable[[], Exception]) -> Any:
    """A server of one model that refuses adapter loads (llama.cpp, or an int8 model with its adapter merged)."""
    from tunesmith.serve.adapters import AdapterLocator
    from tunesmith.serve.app import Limits, ServerState
    from tunesmith.web_guard import allowed_hosts

    class OneModelState(ServerState):
        def load_adapter_sync(self, name: str, source: str) -> Any:
            raise refusal()

    return OneModelState(engine, tokenizer, served, AdapterLocator(served, project=project),
                         api_key=config.api_key,
                         limits=Limits(config.max_body_bytes, min(config.max_tokens, context), context, 1),
                         hosts=allowed_hosts(config.host, config.allow_hosts),
                         apply_system_prompt=config.apply_system_prompt)


def _one_served(config: ServeConfig, what: str) -> tuple[Any, Any, Any]:
    """(project, base, the run of the one --adapter NAME=RUN or None) for an engine that serves one model."""
    _one_adapter_at_most(config, what)
    project, base = _served_base(config)
    if not config.adapters:
        return project, base, None
    if project is None:
        raise UsageError(f"{what} --adapter serves a run of the project, which needs the project",
                         "run from the project directory (--project DIR)")
    return project, base, project.registry().get(config.adapters[0][1]).model(project.base_model)


def _one_adapter_at_most(config: ServeConfig, what: str) -> None:
    if len(config.adapters) > 1:
        llamacpp = "llamacpp" in what
        raise UsageError(f"{what} serves one model, and {len(config.adapters)} --adapter flags were given",
                         f"give one --adapter NAME=RUN (served as {'its GGUF export' if llamacpp else 'the merged model'}), "
                         + ("add --gguf-adapter to hot-swap them as GGUF adapters on the base, " if llamacpp else "")
                         + "or use --engine transformers without --quant to serve several adapters on one base")


def _int8_state(config: ServeConfig, say: Say) -> Any:
    """One model, weight-only int8 (`--quant int8`): the base, or with one --adapter NAME=RUN that run with
    its LoRA merged in, served as NAME. Adapters are not hot-swapped: an int8 model has none."""
    from tunesmith.inference.int8 import quantize_int8
    from tunesmith.inference.loading import load_model
    from tunesmith.inference.worker import Engine
    from tunesmith.models.resolve import tokenizer_in
    from tunesmith.serve.adapters import ServedBase

    project, base, run = _one_served(config, "--quant int8")
    device = config.device or "cpu"  # int8 is a CPU kernel, even where there is a GPU
    if run is not None:
        from tunesmith.ship.gguf_export import run_system_prompt

        system_prompt, _ = run_system_prompt(project, run, say)
        served = ServedBase(ref=run.run_id, path=run.adapter_dir or run.checkpoint_dir, name=config.adapters[0][0],
                            system_prompt=system_prompt)
        say(f"loading run {run.run_id} on {device}, its adapter merged, weight-only int8")
        model = load_model(run.checkpoint_dir, run.adapter_dir, device=device, dtype="float32")
        tokenizer = tokenizer_in(run.tokenizer_dir)
    else:
        served = base
        say(f"loading {base.ref} on {device}, weight-only int8")
        model = load_model(Path(base.path), None, device=device, dtype="float32")
        tokenizer = tokenizer_in(base.path)
    model = quantize_int8(model, device)
    from tunesmith.inference.int8_kernel import kernel

    chosen = kernel()
    say(f"int8 products by the {chosen.name} kernel"
        + (f" (PyTorch's, because {chosen.reason})" if chosen.reason else ""))
    if project is not None:
        from tunesmith.models.chat_template import apply_project_template

        apply_project_template(tokenizer, project)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    engine = Engine(model, tokenizer, device=device, max_batch=config.max_batch or (16 if device == "cpu" else 64))
    return _one_model_state(config, engine, tokenizer, served, project, context, _refusal(
        "--quant int8", served, "serve without --quant to hot-swap adapters, or restart with --adapter NAME=RUN "
        "to serve that run merged and quantised"))


def _llamacpp_state(config: ServeConfig, say: Say) -> Any:
    """One GGUF file behind the same HTTP app: the base model's export, or with one --adapter NAME=RUN,
    that run's export (LoRA merged in) served as NAME. Adapters are not hot-swapped on this engine."""
    from tunesmith.inference import llamacpp_backend as L
    from tunesmith.serve.adapters import ServedBase

    L.check_engine("llamacpp", config.quant)
    if config.gguf_adapters:
        return _gguf_adapters_state(config, say)
    _one_adapter_at_most(config, "--engine llamacpp")
    L.require_llamacpp()
    project, base, run = _one_served(config, "--engine llamacpp")
    quant = config.quant or "f16"
    if run is not None:
        from tunesmith.ship.gguf_export import run_system_prompt

        gguf, tokenizer_dir = L.run_gguf(project, run, quant, say), run.tokenizer_dir
        system_prompt, _ = run_system_prompt(project, run, say)
        served = ServedBase(ref=run.run_id, path=gguf, name=config.adapters[0][0], system_prompt=system_prompt)
    else:
        gguf, tokenizer_dir = L.base_gguf(project, base.ref, Path(base.path), quant, say), Path(base.path)
        served = ServedBase(ref=base.ref, path=gguf, name=base.name, system_prompt=base.system_prompt)
    backend = L.LlamaCppBackend(gguf, tokenizer_dir, quant=quant)
    context = _context_of(tokenizer_dir)
    say(f"loading {gguf} with llama.cpp ({quant}, {backend.n_threads} threads)")
    refusal = _refusal("--engine llamacpp", served, "restart with --gguf-adapter to hot-swap GGUF adapters on the "
                       "base, or with --adapter NAME=RUN to serve that run's GGUF")
    engine = L.LlamaCppEngine(backend, context, refusal)
    return _one_model_state(config, engine, backend.tokenizer, served, project, context, refusal)


def _gguf_adapters_state(config: ServeConfig, say: Say) -> Any:
    """The base model's GGUF with GGUF LoRA adapters hot-swapped per request (`--gguf-adapter`): each
    --adapter, and each adapter POSTed later, is converted to a GGUF adapter once (a run's is its own
    `export --format lora-gguf` file, as `eval --gguf-adapter` answers with) and loaded onto the model."""
    from tunesmith.inference import llamacpp_backend as L
    from tunesmith.serve.adapters import AdapterInfo, ServedBase
    from tunesmith.serve.app import ServerState
    from tunesmith.serve.errors import AdapterRejected

    L.require_llamacpp()
    project, base = _served_base(config)
    quant = config.quant or "f16"
    gguf = L.base_gguf(project, base.ref, Path(base.path), quant, say)
    backend = L.LlamaCppBackend(gguf, Path(base.path), quant=quant)
    context = _context_of(Path(base.path))
    say(f"loading {gguf} with llama.cpp ({quant}, {backend.n_threads} threads), GGUF adapters hot-swapped")
    engine = L.LlamaCppEngine(backend, context, hot_swap=True)
    served = ServedBase(ref=base.ref, path=gguf, name=base.name, system_prompt=base.system_prompt)
    folder = (project.root / ".tunesmith" / "gguf" / "adapters" if project is not None
              else L.default_gguf_folder() / "adapters")

    class GgufAdapterState(ServerState):
        def _load_on_engine(self, info: AdapterInfo) -> None:
            try:
                if info.run_id is not None and project is not None:
                    run = project.registry().get(info.run_id).model(project.base_model)
                    path = L.run_adapter_gguf(project, run, quant, say)
                else:
                    path = L.adapter_gguf(info.path, Path(base.path), folder, quant, say)
                engine.load_adapter(info.name, path)
            except TunesmithError as exc:  # the converter's or llama.cpp's own words, not a generic refusal
                raise AdapterRejected(f"cannot load adapter {info.shown} as a GGUF adapter: {exc.message}",
                                      "serve it with --engine transformers, which applies any PEFT LoRA, or "
                                      "check that it was trained on this base", param="source") from exc

        def _unload_on_engine(self, name: str) -> bool:
            return engine.unload_adapter(name)

    return _hot_swap_state(GgufAdapterState, config, engine, backend.tokenizer, served, project, context, say,
                           loaded_as=" (as a GGUF adapter)")


def _context_of(checkpoint: Path) -> int:
    """The model's context (max_position_embeddings), at most 4096: llama.cpp reserves all of it up front."""
    import json

    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
        context = int(config.get("max_position_embeddings") or 2048)
    except (OSError, ValueError, TypeError):
        context = 2048
    return min(context, 4096)


@dataclass
class RunningServer:
    url: str
    server: Any
    thread: threading.Thread
    state: Any

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def _uvicorn_config(app: Any, config: ServeConfig) -> Any:
    import uvicorn

    # the engine has already answered or failed every request when uvicorn starts waiting (see _server)
    return uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=5, lifespan="on")


def _server(app: Any, state: Any, config: ServeConfig) -> Any:
    """A uvicorn server whose shutdown first lets the engine finish what it is decoding (up to grace_s)
    and fail the rest with a 503 the clients can read, while the HTTP side still delivers the answers;
    only then does uvicorn stop listening and close connections."""
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            closing = asyncio.ensure_future(asyncio.to_thread(state.engine.close, config.grace_s))
            while not closing.done():
                await asyncio.wait({closing}, timeout=0.1)
                if self.force_exit and not closing.done():  # a second Ctrl-C: no grace, fail the rest now
                    await asyncio.to_thread(state.engine.close, 0)
                    # every request has its answer or error now: the usual quick close, not uvicorn's
                    # forced one, which cancels the lifespan and prints its traceback
                    self.force_exit = False
                    break
            await closing
            await asyncio.sleep(0.2)  # let the handlers write the last answers and errors
            await super().shutdown(sockets=sockets)

    return Server(_uvicorn_config(app, config))


def _app_with_lifespan(state: Any, config: ServeConfig) -> Any:
    from tunesmith.serve.app import create_app

    # the engine is closed when uvicorn shuts down (_server); closing again at the end of the lifespan
    # covers a server stopped any other way
    return create_app(state, on_shutdown=lambda: state.engine.close(0))


def start_in_thread(state: Any, config: ServeConfig) -> RunningServer:
    """Serve `state` on a background thread (tests, benchmarks); port 0 picks a free port."""
    app = _app_with_lifespan(state, config)
    sock = bind_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    server = _server(app, state, config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="tunesmith-http")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ModelError("the HTTP server did not start", "see the log above")
        time.sleep(0.02)
    return RunningServer(f"http://{host}:{port}/v1", server, thread, state)


def serve(config: ServeConfig, say: Say | None = None) -> None:
    """Run until interrupted (Ctrl-C finishes requests in flight for up to grace_s, then fails them)."""
    say = say or (lambda m: print(m, file=sys.stderr))
    if config.engine not in ENGINES:
        raise UsageError(f"unknown engine {config.engine!r}", ENGINE_HINT)
    if config.quant is not None and config.engine == "vllm":
        raise UsageError(f"--quant {config.quant} is not passed to vLLM: --engine vllm serves the checkpoint as it is",
                         "quantise with vLLM's own options, or serve with --engine llamacpp or --quant int8 "
                         "(transformers)")
    if config.quant is not None and config.engine != "llamacpp" and config.quant != "int8":
        raise UsageError(f"--quant {config.quant} only applies with --engine llamacpp (the {config.engine} engine "
                         "serves the checkpoint as it is, or weight-only int8 with --quant int8)",
                         "add --engine llamacpp, use --quant int8, or leave --quant out")
    _check_gguf_adapters(config)
    _check_exposure(config, say)
    if config.engine == "vllm":
        import shutil

        command, env = vllm_command(config)
        if shutil.which("vllm") is None:
            raise UsageError("--engine vllm needs vLLM, which is not installed",
                             "pip install vllm (on a machine with a supported GPU), or use --engine transformers")
        say("starting vLLM: " + shlex.join(command) + (" (API key in VLLM_API_KEY)" if env else ""))
        os.execvpe(command[0], command, {**os.environ, **env})
    sock = bind_socket(config.host, config.port)  # before loading the model: a taken port fails in a second
    try:
        state = build_state(config, say)
        app = _app_with_lifespan(state, config)
        names = ", ".join([state.base.name, *state.adapters])
        say(f"serving {names} at http://{config.host}:{config.port}/v1" + (" (API key required)" if config.api_key else ""))
        _server(app, state, config).run(sockets=[sock])
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or a UsageError that says why not (port taken, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host!r}: {exc.strerror}",
                         "--host takes an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use",
                             "stop what listens there, or pick another port with --port") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}",
                         "pick another --host or --port (ports below 1024 need privileges)") from None
    return sock


def _check_exposure(config: ServeConfig, say: Say) -> None:
    """A server other machines can reach needs a key, unless the operator waived it in so many words."""
    if _is_loopback(config.host) or config.api_key:
        return
    if not config.insecure_no_auth:
        raise UsageError(f"listening on {config.host} without an API key: anyone who can reach this port could "
                         "use the models and load adapters",
                         f"give a key with --api-key-file FILE (or {API_KEY_ENV}), or pass --insecure-no-auth "
                         "if the network is trusted")
    say(f"warning: listening on {config.host} without an API key (--insecure-no-auth): anyone who can reach "
        "this port can use the models and load adapters")


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def vllm_command(config: ServeConfig) -> tuple[list[str], dict[str, str]]:
    """The `vllm serve` command line (and environment) serving the same base and adapters.

    `serve` execs it: vLLM's own OpenAI server answers the requests, nothing of tunesmith sits in between,
    so ``response_format`` (``json_object``, ``json_schema``) reaches vLLM as sent and its structured
    outputs enforce it (no option here turns them off)."""
    import json

    from tunesmith.serve.adapters import AdapterLocator, check_name

    if config.engine != "vllm":
        raise UsageError(f"unknown engine {config.engine!r}", "use --engine transformers or --engine vllm")
    project, base = _served_base(config)
    locator = AdapterLocator(base, project=project, allowed_dirs=list(config.allow_dirs))
    modules: list[str] = []
    ranks: list[int] = []
    for adapter_name, source in config.adapters:
        check_name(adapter_name, base)
        path, run_id = locator.locate(source)
        locator.inspect(path, run_id)
        modules.append(f"{adapter_name}={path}")
        adapter_config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        rank = adapter_config.get("r", 16) if isinstance(adapter_config, dict) else None
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise UsageError(f"adapter {adapter_name!r}: adapter_config.json has r={rank!r}, not a LoRA rank",
                             "r must be a positive integer; re-save the adapter with PEFT")
        ranks.append(rank)
    command = ["vllm", "serve", str(base.path), "--served-model-name", base.name,
               "--host", config.host, "--port", str(config.port),
               "--enable-lora", "--max-lora-rank", str(_vllm_rank(max(ranks, default=16))),
               "--max-loras", str(max(4, len(modules)))]
    if modules:
        command += ["--lora-modules", *modules]
    env = {}
    if config.api_key:  # in the environment, not on the command line where `ps` shows it
        env["VLLM_API_KEY"] = config.api_key
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING stays off: vLLM's own load endpoint takes any path, which would
    # bypass --allow-dir; restart with other --adapter flags instead
    return command, env


def _vllm_rank(rank: int) -> int:
    """vLLM accepts only some maximum ranks (8, 16, 32, 64, ...): the smallest that holds `rank`."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    return rank
