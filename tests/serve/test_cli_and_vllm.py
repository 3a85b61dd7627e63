"""`tunesmith serve` flags, the vLLM command it would run, and its errors."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.errors import UsageError
from tunesmith.serve.api import ServeConfig, parse_adapter_flag, vllm_command


def test_parse_adapter_flag():
    assert parse_adapter_flag("sql=latest") == ("sql", "latest")
    assert parse_adapter_flag("runs/20261129-x/adapter/") == ("adapter", "runs/20261129-x/adapter/")
    assert parse_adapter_flag("20261129-abc") == ("20261129-abc", "20261129-abc")
    for bad in ("=x", "name=", ""):
        with pytest.raises(UsageError) as info:
            parse_adapter_flag(bad)
        assert "NAME=RUN_OR_PATH" in info.value.hint or "--adapter" in info.value.message


def test_vllm_command_serves_the_same_base_and_adapters(serve_base, serve_assets):
    config = ServeConfig(base=str(serve_base), engine="vllm", host="0.0.0.0", port=9001, api_key="k",
                         allow_dirs=[serve_assets["allowed"]],
                         adapters=[("alpha", str(serve_assets["alpha"])), ("beta", str(serve_assets["beta"]))])
    command, env = vllm_command(config)
    assert command[:3] == ["vllm", "serve", str(serve_base.resolve())]
    flags = command[3:]
    assert flags[flags.index("--served-model-name") + 1] == serve_base.name
    assert flags[flags.index("--host") + 1] == "0.0.0.0" and flags[flags.index("--port") + 1] == "9001"
    assert "--enable-lora" in flags and flags[flags.index("--max-lora-rank") + 1] == "8"  # rank 4 -> vLLM's 8
    i = flags.index("--lora-modules")
    assert flags[i + 1: i + 3] == [f"alpha={serve_assets['alpha'].resolve()}", f"beta={serve_assets['beta'].resolve()}"]
    # the key travels in the environment (not visible in `ps`); vLLM's own load endpoint stays off,
    # since it would load adapters from any path
    assert "--api-key" not in flags and "k" not in flags
    assert env == {"VLLM_API_KEY": "k"}


def test_vllm_command_applies_the_same_adapter_checks(serve_base, serve_assets):
    from tunesmith.serve.errors import AdapterRejected, Forbidden

    base = dict(base=str(serve_base), engine="vllm", allow_dirs=[serve_assets["allowed"]])
    with pytest.raises(Forbidden):
        vllm_command(ServeConfig(adapters=[("x", str(serve_assets["outside"]))], **base))
    with pytest.raises(AdapterRejected) as info:
        vllm_command(ServeConfig(adapters=[("x", str(serve_assets["wide_adapter"]))], **base))
    assert info.value.code == "base_mismatch"


def test_cli_print_command_and_missing_vllm(serve_base, serve_assets, monkeypatch):
    runner = CliRunner()
    args = ["serve", "--base", str(serve_base), "--engine", "vllm", "--allow-dir", str(serve_assets["allowed"]),
            "--adapter", f"alpha={serve_assets['alpha']}"]
    result = runner.invoke(app, [*args, "--print-command"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["command"][:2] == ["vllm", "serve"] and f"alpha={serve_assets['alpha'].resolve()}" in printed["command"]
    if shutil.which("vllm") is None:
        result = runner.invoke(app, args)
        assert result.exit_code != 0 and "vLLM" in result.output and "not installed" in result.output


def test_cli_without_project_or_base_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code != 0 and "--base" in result.output and "tunesmith.yaml" in result.output


def test_cli_bad_adapter_flag(serve_base):
    result = CliRunner().invoke(app, ["serve", "--base", str(serve_base), "--adapter", "x="])
    assert result.exit_code != 0 and "NAME=RUN_OR_PATH" in result.output


def test_cli_unknown_engine(serve_base):
    result = CliRunner().invoke(app, ["serve", "--base", str(serve_base), "--engine", "tgi"])
    assert result.exit_code != 0 and "unknown engine 'tgi'" in result.output and "--engine vllm" in result.output


def test_serving_without_fastapi_says_which_extra_to_install(serve_base, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    result = CliRunner().invoke(app, ["serve", "--base", str(serve_base)])
    assert result.exit_code != 0 and "needs uvicorn" in result.output and "tunesmith[serve]" in result.output


def test_cli_a_taken_port_or_unknown_host_fails_before_the_model_loads(serve_base, monkeypatch):
    import socket

    import tunesmith.serve.api as serve_api

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the port is taken")

    monkeypatch.setattr(serve_api, "build_state", must_not_load)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = CliRunner().invoke(app, ["serve", "--base", str(serve_base), "--port", str(port)])
    finally:
        taken.close()
    assert result.exit_code == 2 and f"port {port} on 127.0.0.1 is already in use" in result.output
    assert "--port" in result.output
    result = CliRunner().invoke(app, ["serve", "--base", str(serve_base), "--host", "no-such-host.invalid",
                                      "--api-key", "k"])
    assert result.exit_code == 2 and "cannot listen on 'no-such-host.invalid'" in result.output
    result = CliRunner().invoke(app, ["serve", "--base", str(serve_base), "--port", "70000"])
    assert result.exit_code == 2 and "65535" in result.output


def test_a_second_ctrl_c_cuts_the_grace_short(monkeypatch):
    import asyncio
    import threading
    import time

    import uvicorn

    from tunesmith.serve.api import _server

    class SlowEngine:
        def __init__(self) -> None:
            self.now = threading.Event()
            self.graces: list[float] = []

        def close(self, grace_s: float) -> None:
            self.graces.append(grace_s)
            self.now.wait(grace_s)  # rows decode until their grace is over...
            if grace_s == 0:
                self.now.set()  # ...or a graceless close fails them at once

    async def no_http_shutdown(self, sockets=None) -> None:
        pass

    monkeypatch.setattr(uvicorn.Server, "shutdown", no_http_shutdown)
    engine = SlowEngine()
    state = type("State", (), {"engine": engine})()
    server = _server(lambda scope, receive, send: None, state, ServeConfig(grace_s=60))

    async def two_signals() -> float:
        started = time.monotonic()
        shutting = asyncio.ensure_future(server.shutdown())
        await asyncio.sleep(0.3)
        server.force_exit = True  # what uvicorn does on the second SIGINT
        await shutting
        return time.monotonic() - started

    assert asyncio.run(two_signals()) < 5
    assert engine.graces == [60, 0] and server.force_exit is False


def test_vllm_command_refuses_an_adapter_whose_rank_is_not_a_rank(serve_base, serve_assets, tmp_path):
    bad = serve_assets["allowed"] / "bad-rank"
    shutil.copytree(serve_assets["alpha"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["r"] = "sixteen"
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    try:
        with pytest.raises(UsageError) as info:
            vllm_command(ServeConfig(base=str(serve_base), engine="vllm", allow_dirs=[serve_assets["allowed"]],
                                     adapters=[("bad", str(bad))]))
        assert "adapter 'bad': adapter_config.json has r='sixteen', not a LoRA rank" in info.value.message
    finally:
        shutil.rmtree(bad)
