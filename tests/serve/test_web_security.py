"""`tunesmith serve` against web pages and hostile requests: Host and Origin rules, the adapter cap, NUL
bytes, symlinked adapter files, paths in answers, and the flags that guard an exposed server.

Everything goes through a real uvicorn on 127.0.0.1, since the Host and Origin rules are about what a
browser sends over a socket."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fixtures.serving import start
from tunesmith.cli import app

EVIL = "http://evil.example"


def _root(server) -> str:
    return server.url[: -len("/v1")]


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1].split("/")[0])


def _send(server, method: str, path: str, *, body: object = None, headers: dict[str, str] | None = None,
          content_type: str | None = "application/json") -> httpx.Response:
    sent = dict(headers or {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    content = json.dumps(body).encode() if body is not None else None
    return httpx.request(method, _root(server) + path, content=content, headers=sent, timeout=60)


def _error(reply: httpx.Response) -> dict:
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _model_ids(server) -> list[str]:
    return [m["id"] for m in httpx.get(server.url + "/models", timeout=60).json()["data"]]


# -- 2. other web sites -------------------------------------------------------------------------------


def test_a_web_page_cannot_load_an_adapter(server, serve_assets):
    body = {"name": "csrf", "source": str(serve_assets["gamma"])}
    # the attack as reported: a form-like post from another site skips the browser's preflight
    reply = _send(server, "POST", "/v1/adapters", body=body, headers={"Origin": EVIL}, content_type="text/plain")
    assert reply.status_code == 403, reply.text
    error = _error(reply)
    assert error["type"] == "permission_error" and error["code"] == "cross_origin_refused"
    assert f"cross-origin request from '{EVIL}' refused" in error["message"]
    # a JSON post from another site is refused as well, and so is an unload
    assert _send(server, "POST", "/v1/adapters", body=body, headers={"Origin": EVIL}).status_code == 403
    assert _send(server, "DELETE", "/v1/adapters/alpha", headers={"Origin": "null"}).status_code == 403
    assert "csrf" not in _model_ids(server) and "alpha" in _model_ids(server)


def test_json_routes_take_only_a_json_body(server, serve_assets):
    body = {"name": "plain", "source": str(serve_assets["gamma"])}
    reply = _send(server, "POST", "/v1/adapters", body=body, content_type="text/plain")
    assert reply.status_code == 415, reply.text
    error = _error(reply)
    assert error["code"] == "unsupported_media_type" and "'text/plain' is not accepted" in error["message"]
    chat = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    form = _send(server, "POST", "/v1/chat/completions", body=chat, content_type="application/x-www-form-urlencoded")
    assert form.status_code == 415 and _error(form)["type"] == "invalid_request_error"
    assert "plain" not in _model_ids(server)


def test_a_foreign_host_is_not_served(server):
    for method, path in (("GET", "/v1/models"), ("GET", "/health"), ("POST", "/v1/chat/completions")):
        reply = _send(server, method, path, body={}, headers={"Host": f"evil.example:{_port(server)}"})
        assert reply.status_code == 403, (path, reply.text)
        error = _error(reply)
        assert error["code"] == "host_not_allowed"
        assert "'evil.example' is not served here" in error["message"] and "--allow-host" in error["message"]
    for name in ("localhost", "127.0.0.1"):
        assert _send(server, "GET", "/v1/models", headers={"Host": f"{name}:{_port(server)}"}).status_code == 200


def test_the_servers_own_page_may_change_state(server):
    own = f"http://127.0.0.1:{_port(server)}"
    reply = _send(server, "DELETE", "/v1/adapters/no-such", headers={"Origin": own})
    assert reply.status_code == 404 and _error(reply)["code"] == "model_not_found"


def test_allow_host_adds_a_name_for_a_reverse_proxy(serve_base, serve_assets):
    running = start(serve_base, serve_assets, adapters=[], allow_hosts=["models.lan"])
    try:
        assert _send(running, "GET", "/v1/models", headers={"Host": "models.lan"}).status_code == 200
        assert _send(running, "GET", "/v1/models", headers={"Host": "other.lan"}).status_code == 403
    finally:
        running.stop()


def test_the_adapter_cap_says_the_cap_and_how_to_make_room(serve_base, serve_assets):
    running = start(serve_base, serve_assets, max_adapters=2)  # alpha and beta fill it
    try:
        gamma = {"name": "gamma", "source": str(serve_assets["gamma"])}
        full = _send(running, "POST", "/v1/adapters", body=gamma)
        assert full.status_code == 409, full.text
        error = _error(full)
        assert error["code"] == "too_many_adapters"
        assert "2 adapters are loaded, the most this server holds (--max-adapters 2)" in error["message"]
        assert "DELETE /v1/adapters/NAME" in error["message"] and "--max-adapters" in error["message"]
        assert _send(running, "DELETE", "/v1/adapters/beta").status_code == 200
        assert _send(running, "POST", "/v1/adapters", body=gamma).status_code == 201
    finally:
        running.stop()


def test_more_startup_adapters_than_the_cap_is_a_usage_error(serve_base, serve_assets):
    from tunesmith.errors import UsageError
    from tunesmith.serve.api import ServeConfig, build_state

    config = ServeConfig(base=str(serve_base), port=0, allow_dirs=[serve_assets["allowed"]], max_adapters=1,
                         adapters=[("alpha", str(serve_assets["alpha"])), ("beta", str(serve_assets["beta"]))])
    with pytest.raises(UsageError) as info:
        build_state(config)
    assert "2 adapters given with --adapter, but --max-adapters is 1" in info.value.message
    assert "--max-adapters 2" in info.value.hint


# -- 6. no body makes a 5xx ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["source", "path"])
def test_a_nul_byte_in_the_adapter_source_is_a_400(server, serve_assets, field):
    reply = _send(server, "POST", "/v1/adapters", body={"name": "nul", field: str(serve_assets["gamma"]) + "\x00x"})
    assert reply.status_code == 400, reply.text
    error = _error(reply)
    assert error["param"] == "source" and "contains a NUL byte" in error["message"]


def test_sources_the_file_system_refuses_are_400s(server, serve_assets):
    allowed = serve_assets["allowed"]
    for a, b in (("loop-a", "loop-b"), ("loop-b", "loop-a")):
        if not (allowed / a).is_symlink():
            (allowed / a).symlink_to(allowed / b)
    for source, message in (("~no-such-user-here/x", "is not a usable path: Could not determine home directory"),
                            (str(allowed / ("a" * 300)), "cannot be read: File name too long"),
                            (str(allowed / "loop-a"), "is not a usable path: a symlink loop")):
        reply = _send(server, "POST", "/v1/adapters", body={"name": "fs", "source": source})
        assert reply.status_code == 400, reply.text
        error = _error(reply)
        assert error["code"] == "invalid_path" and message in error["message"]


def _broken_copy(serve_assets, name: str, config_text: str | None) -> Path:
    target = serve_assets["allowed"] / name
    if not target.exists():
        shutil.copytree(serve_assets["alpha"], target)
        if config_text is None:  # a link to itself: a loop
            (target / "adapter_config.json").unlink()
            (target / "adapter_config.json").symlink_to(target / "adapter_config.json")
        else:
            (target / "adapter_config.json").write_text(config_text)
    return target


def test_garbage_adapter_configs_are_400s_that_say_what_is_wrong(server, serve_assets):
    config = json.loads((serve_assets["alpha"] / "adapter_config.json").read_text())
    cases = [("cfg-list", "[1]", "cfg-list/adapter_config.json holds a list, not a JSON object"),
             ("cfg-base", json.dumps(config | {"base_model_name_or_path": 5}),
              "cfg-base/adapter_config.json: base_model_name_or_path is int, not a string"),
             ("cfg-loop", None, "cannot read cfg-loop/adapter_config.json: a symlink loop")]
    for name, text, message in cases:
        source = str(_broken_copy(serve_assets, name, text))
        reply = _send(server, "POST", "/v1/adapters", body={"name": name, "source": source})
        assert reply.status_code == 400, reply.text
        error = _error(reply)
        assert error["code"] == "adapter_rejected" and message in error["message"]


def test_a_bug_is_still_answered_in_openai_shape(server, serve_assets, monkeypatch):
    def broken(source):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.state.locator, "locate", broken)
    reply = _send(server, "POST", "/v1/adapters", body={"name": "bug", "source": str(serve_assets["gamma"])})
    assert reply.status_code == 500
    error = _error(reply)
    assert error["type"] == "server_error" and error["message"] == "internal error: RuntimeError"


# -- 7. symlinks, paths in answers --------------------------------------------------------------------


@pytest.mark.parametrize("linked", ["adapter_model.safetensors", "adapter_config.json"])
def test_an_adapter_file_linking_outside_the_allowed_dirs_is_refused(server, serve_assets, linked):
    sneaky = serve_assets["allowed"] / f"linked-{linked.split('.')[0]}"
    if not sneaky.exists():
        shutil.copytree(serve_assets["alpha"], sneaky)
        (sneaky / linked).unlink()
        (sneaky / linked).symlink_to(serve_assets["outside"] / linked)
    reply = _send(server, "POST", "/v1/adapters", body={"name": sneaky.name, "source": str(sneaky)})
    assert reply.status_code == 403, reply.text
    error = _error(reply)
    assert error["code"] == "path_not_allowed"
    assert f"{sneaky.name}/{linked} links to a file outside the allowed directories" in error["message"]
    assert str(serve_assets["root"]) not in error["message"]
    assert sneaky.name not in _model_ids(server)


def test_answers_name_no_absolute_paths(server, serve_assets):
    listed = httpx.get(server.url + "/models", timeout=60).json()["data"]
    roots = {m["id"]: m["root"] for m in listed}
    assert roots["alpha"] == "alpha" and roots["beta"] == "beta"
    assert roots[server.state.base.name] == server.state.base.name  # served from a directory: its name only
    assert not any(str(serve_assets["root"]) in json.dumps(m) for m in listed)
    refused = _send(server, "POST", "/v1/adapters", body={"name": "x", "source": "/etc"})
    assert refused.status_code == 403
    message = _error(refused)["message"]
    assert "allowed: adapters" in message and str(serve_assets["root"]) not in message
    # nor do the errors of the libraries that load an adapter
    broken = serve_assets["allowed"] / "no-weights"
    if not broken.exists():
        shutil.copytree(serve_assets["alpha"], broken)
        (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    failed = _send(server, "POST", "/v1/adapters", body={"name": "no-weights", "source": str(broken)})
    assert failed.status_code == 400 and _error(failed)["message"].startswith("cannot load adapter no-weights: ")
    assert str(serve_assets["root"]) not in failed.text


# -- 7. flags guarding an exposed server -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def no_model_load(monkeypatch):
    """The CLI stops where the model would load; the config it built is kept to look at."""
    import tunesmith.serve.api as serve_api
    from tunesmith.errors import UsageError

    seen: list = []

    def stop_here(config, say=None):
        seen.append(config)
        raise UsageError("stopped before loading the model")

    monkeypatch.setattr(serve_api, "build_state", stop_here)
    monkeypatch.delenv("TUNESMITH_API_KEY", raising=False)
    return seen


def test_all_interfaces_without_a_key_is_refused(serve_base, no_model_load):
    result = CliRunner().invoke(app, ["serve", "--base", str(serve_base), "--host", "0.0.0.0",
                                      "--port", str(_free_port())])
    assert result.exit_code == 2, result.output
    assert "listening on 0.0.0.0 without an API key" in result.output
    assert "--api-key-file" in result.output and "--insecure-no-auth" in result.output
    assert not no_model_load  # refused before anything loads


def test_insecure_no_auth_serves_all_interfaces_with_a_warning(serve_base, no_model_load):
    result = CliRunner().invoke(app, ["serve", "--base", str(serve_base), "--host", "0.0.0.0",
                                      "--port", str(_free_port()), "--insecure-no-auth"])
    assert "stopped before loading the model" in result.output
    assert "warning: listening on 0.0.0.0 without an API key" in result.output
    assert no_model_load and no_model_load[0].api_key is None


def test_api_key_file_and_environment(serve_base, no_model_load, tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    args = ["serve", "--base", str(serve_base), "--host", "0.0.0.0", "--port", str(_free_port())]
    result = CliRunner().invoke(app, [*args, "--api-key-file", str(key_file)])
    assert "stopped before loading the model" in result.output, result.output
    assert no_model_load[-1].api_key == "s3cret"
    monkeypatch.setenv("TUNESMITH_API_KEY", "from-env")
    result = CliRunner().invoke(app, args)
    assert "stopped before loading the model" in result.output and no_model_load[-1].api_key == "from-env"


def test_bad_api_key_files_are_clear_errors(serve_base, no_model_load, tmp_path):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.write_text(" \n")
    args = ["serve", "--base", str(serve_base)]
    result = CliRunner().invoke(app, [*args, "--api-key-file", str(missing)])
    assert result.exit_code == 2 and f"--api-key-file {missing}: no such file" in result.output
    assert "write the key into it" in result.output
    result = CliRunner().invoke(app, [*args, "--api-key-file", str(empty)])
    assert result.exit_code == 2 and f"--api-key-file {empty} is empty" in result.output
    result = CliRunner().invoke(app, [*args, "--api-key-file", str(tmp_path)])
    assert result.exit_code == 2 and f"--api-key-file {tmp_path}: cannot read it" in result.output
    result = CliRunner().invoke(app, [*args, "--api-key", "a", "--api-key-file", str(empty)])
    assert result.exit_code == 2 and "--api-key and --api-key-file both given" in result.output
    assert not no_model_load


def test_help_says_to_prefer_the_key_file():
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert "--api-key-file" in text and "--allow-host" in text and "--max-adapters" in text
    assert "shows in ps" in text
