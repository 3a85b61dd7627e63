"""`tunesmith serve`: an OpenAI-compatible endpoint, one base model, adapters hot-swapped by name."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.serve.adapters import DEFAULT_MAX_ADAPTERS


@app.command()
@handle_errors
def serve(
    project: Path = typer.Option(Path("."), "--project", "-p", help="Project directory (its base model, runs and system prompt)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the project's base_model)."),
    adapter: list[str] = typer.Option([], "--adapter", "-a", help="NAME=RUN_OR_DIR to load at start (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1: this machine only; any other needs a key)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="Require 'Authorization: Bearer KEY', KEY read from this file (or set TUNESMITH_API_KEY)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="The key itself; it shows in ps, so prefer --api-key-file or TUNESMITH_API_KEY."),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth", help="Allow a --host other than loopback without a key (a trusted network only)."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Another Host name to answer to, e.g. a reverse proxy's (repeatable)."),
    allow_dir: list[Path] = typer.Option([], "--allow-dir", help="Another directory adapters may be loaded from (repeatable)."),
    max_adapters: int = typer.Option(DEFAULT_MAX_ADAPTERS, "--max-adapters", min=1, help="Most adapters loaded at once (each holds memory; unload with DELETE /v1/adapters/NAME)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", min=1, help="Requests decoded together (default 16 on CPU, 64 on GPU)."),
    max_tokens: int = typer.Option(2048, "--max-tokens", min=1, help="Largest max_tokens a request may ask for."),
    max_body_kb: int = typer.Option(1024, "--max-body-kb", min=1, help="Largest request body, in KiB."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: a GPU when there is one)."),
    no_system_prompt: bool = typer.Option(False, "--no-system-prompt", help="Do not add the project's system prompt to requests without one."),
    engine: str = typer.Option("transformers", "--engine", help="transformers (built in), vllm (runs `vllm serve`) or llamacpp (one GGUF file: the base's, or one --adapter run's export; with --gguf-adapter, GGUF adapters hot-swapped on the base)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="int8: serve one model weight-only int8 (the base, or one --adapter NAME=RUN merged; no hot-swap). With --engine llamacpp: the GGUF export served (f16 default, q8_0, ...; q4_1: the builtin model's own file)."),
    gguf_adapter: bool = typer.Option(False, "--gguf-adapter", help="With --engine llamacpp: serve the base model's GGUF with each --adapter (and each adapter POSTed later) as a GGUF LoRA adapter, hot-swapped per request, instead of one run's merged export."),
    print_command: bool = typer.Option(False, "--print-command", help="With --engine vllm: print the command as JSON and exit."),
) -> None:
    """Serve the base model and its LoRA adapters over the OpenAI chat completions API."""
    from tunesmith.serve.api import (
        API_KEY_ENV, ServeConfig, parse_adapter_flag, read_api_key, serve as run_server, vllm_command,
    )

    config = ServeConfig(
        project_dir=project, base=base, adapters=[parse_adapter_flag(a) for a in adapter], host=host, port=port,
        api_key=read_api_key(api_key, api_key_file, os.environ.get(API_KEY_ENV)), insecure_no_auth=insecure_no_auth,
        allow_dirs=list(allow_dir), allow_hosts=list(allow_host), max_adapters=max_adapters, max_batch=max_batch,
        max_tokens=max_tokens, max_body_bytes=max_body_kb * 1024, device=device,
        apply_system_prompt=not no_system_prompt, engine=engine, quant=quant, gguf_adapters=gguf_adapter,
    )
    if print_command:
        command, env = vllm_command(config)
        print(json.dumps({"command": command, "env": env}))
        return
    run_server(config, say=lambda m: print(m, file=sys.stderr))
