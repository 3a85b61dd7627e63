"""`--engine llamacpp`: a GGUF export answering through llama-cpp-python.

The error messages, the flag checks and the cache key run everywhere (the GGUF files are real exports
of the tiny model; only loading them needs llama.cpp). Parity with the merged transformers model, the
CLI end to end and the server need the package and are skipped with the reason where it is absent.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import add_run, sealed_project
from tunesmith.cli import app
from tunesmith.errors import ModelError, UsageError
from tunesmith.inference import llamacpp_backend as L
from tunesmith.inference.types import DecodeSettings

MAX_NEW = 8
RUN = "20250101-000001-aaaa-lora"
needs_llamacpp = pytest.mark.skipif(not L.llamacpp_available(),
                                    reason="llama-cpp-python is not installed (it compiles llama.cpp; "
                                           "`make test-llamacpp` builds it and runs these tests)")


def _build_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter with random B matrices (B is zero at initialisation, and would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    with torch.random.fork_rng():  # lora_A is drawn from the global generator: the same adapter every session
        torch.manual_seed(0)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out


def _new_project(root: Path, tiny_model_dir: Path) -> Path:
    """A JSON project on the tiny model with a sealed test split and one LoRA run (`RUN`)."""
    sealed_project(root, tiny_model_dir, 24, max_new_tokens=MAX_NEW)
    add_run(root, RUN, method="lora", base_model=tiny_model_dir,
            adapter=_build_adapter(tiny_model_dir, root.parent / f"{root.name}-adapter"))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    return _new_project(tmp_path_factory.mktemp("llamacpp-project"), tiny_model_dir)


@pytest.fixture(scope="module")
def base_exports(tmp_path_factory, tiny_model_dir):
    """The tiny model exported to GGUF f16 and q8_0 the way `eval base --engine llamacpp` does it."""
    holder = types.SimpleNamespace(root=tmp_path_factory.mktemp("llamacpp-exports"))
    say: list[str] = []
    files = {q: L.base_gguf(holder, str(tiny_model_dir), tiny_model_dir, q, say.append) for q in ("f16", "q8_0")}
    return files, say


def _error(result) -> dict:
    return json.loads(result.stdout)["error"]


# -- everywhere: errors and flags ----------------------------------------------------------------


def test_missing_llama_cpp_names_the_make_target_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert not L.llamacpp_available()
    with pytest.raises(ModelError) as info:
        L.require_llamacpp()
    assert info.value.message == ("--engine llamacpp needs llama-cpp-python (the `llama_cpp` module), "
                                  "which is not installed")
    assert "make test-llamacpp" in info.value.hint
    assert "pip install 'tunesmith[llamacpp]'" in info.value.hint


def test_eval_with_llama_cpp_missing_fails_before_exporting(project, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    result = CliRunner().invoke(app, ["eval", RUN, "-p", str(project), "--engine", "llamacpp", "--json"])
    assert result.exit_code == 2, result.output
    error = _error(result)
    assert error["message"].startswith("--engine llamacpp needs llama-cpp-python")
    assert "make test-llamacpp" in error["hint"]
    assert not (project / "runs" / RUN / "export").exists()


def test_baseline_with_llama_cpp_missing_says_how_to_install(project, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    result = CliRunner().invoke(app, ["baseline", "-p", str(project), "--engine", "llamacpp", "--json"])
    assert result.exit_code == 2, result.output
    assert "tunesmith[llamacpp]" in _error(result)["hint"]


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["--engine", "onnx"], "--engine 'onnx' is not an evaluation engine", "--engine llamacpp"),
    (["--quant", "q8_0"], "--quant q8_0 only applies with --engine llamacpp", "add --engine llamacpp"),
    (["--quant", "int8", "--engine", "llamacpp"],
     "--quant int8 is the transformers engine's weight-only int8, not a GGUF type", "use --quant q8_0"),
    (["--engine", "llamacpp", "--quant", "q3_k"], "--quant 'q3_k' is not a GGUF type this engine evaluates",
     "q4_1 for the builtin"),
    (["--gguf-adapter"], "--gguf-adapter only applies with --engine llamacpp", "add --engine llamacpp"),
])
def test_eval_flags_that_do_not_go_together(tmp_path, args, message, hint):
    result = CliRunner().invoke(app, ["eval", "base", "-p", str(tmp_path), "--json", *args])
    assert result.exit_code == 2, result.output
    error = _error(result)
    assert error["message"] == message
    assert hint in error["hint"]


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["base", "--endpoint", "http://127.0.0.1:9/v1"],
     "--engine llamacpp evaluates a GGUF file on this machine, not an --endpoint", "leave out --endpoint"),
    (["base", "--gguf-adapter"], "--gguf-adapter puts a run's LoRA on the base model's GGUF: 'base' has no adapter",
     "give a run id, or leave out --gguf-adapter"),
    # the install check comes first: the rest needs llama.cpp to get this far
    pytest.param([RUN, "--quant", "q4_1"], f"--quant q4_1 is the builtin model's own file: run {RUN} has no q4_1 "
                 "export", "use --quant f16", marks=needs_llamacpp),
])
def test_eval_engine_llamacpp_refuses_what_has_no_gguf(project, args, message, hint):
    result = CliRunner().invoke(app, ["eval", *args, "-p", str(project), "--engine", "llamacpp", "--json"])
    assert result.exit_code == 2, result.output
    assert _error(result)["message"] == message
    assert hint in _error(result)["hint"]


@needs_llamacpp
def test_eval_engine_llamacpp_refuses_a_checkpoint_directory(project, tiny_model_dir):
    result = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "-p", str(project), "--engine", "llamacpp",
                                      "--json"])
    assert result.exit_code == 2, result.output
    assert _error(result)["message"] == f"--engine llamacpp evaluates a run's GGUF export, not the directory {tiny_model_dir}"


def test_q4_1_is_only_the_builtin_models_own_file(tmp_path, tiny_model_dir):
    with pytest.raises(UsageError) as info:
        L.base_gguf(types.SimpleNamespace(root=tmp_path), str(tiny_model_dir), tiny_model_dir, "q4_1", print)
    assert info.value.message == (f"--quant q4_1 is the builtin model's own file, and the base model "
                                  f"{tiny_model_dir} is not builtin")
    assert "--quant f16" in info.value.hint


def test_serve_refuses_a_quant_the_engine_would_ignore(tiny_model_dir):
    from tunesmith.serve.api import ServeConfig, serve

    with pytest.raises(UsageError) as info:
        serve(ServeConfig(base=str(tiny_model_dir), quant="q8_0"))
    assert info.value.message == ("--quant q8_0 only applies with --engine llamacpp (the transformers engine serves "
                                  "the checkpoint as it is, or weight-only int8 with --quant int8)")
    assert info.value.hint == "add --engine llamacpp, use --quant int8, or leave --quant out"


def test_without_a_project_the_base_export_goes_to_the_model_cache(isolated_cache, tiny_model_dir):
    said: list[str] = []
    target = L.base_gguf(None, str(tiny_model_dir), tiny_model_dir, "f16", said.append)
    assert target.is_file() and target.parent == isolated_cache / "gguf"
    assert L.base_gguf(None, str(tiny_model_dir), tiny_model_dir, "f16", said.append) == target  # exported once
    assert len([s for s in said if s.startswith("the base model has no f16 GGUF yet")]) == 1


def test_a_missing_gguf_file_says_how_to_export_it(tmp_path, tiny_model_dir):
    with pytest.raises(ModelError) as info:
        L.LlamaCppBackend(tmp_path / "model-f16.gguf", tiny_model_dir, quant="f16")
    assert info.value.message == f"GGUF model not found: {tmp_path / 'model-f16.gguf'}"
    assert info.value.hint == "export it first: tunesmith export RUN --format gguf"


def test_serve_refuses_a_second_model(tmp_path):
    from tunesmith.serve.api import ServeConfig, build_state

    config = ServeConfig(project_dir=tmp_path, base="builtin:smollm2-135m-instruct", engine="llamacpp",
                         adapters=[("a", "run-a"), ("b", "run-b")])
    with pytest.raises(UsageError) as info:
        build_state(config)
    assert info.value.message == "--engine llamacpp serves one model, and 2 --adapter flags were given"
    assert "--engine transformers" in info.value.hint


def test_serve_with_llama_cpp_missing_says_how_to_install(tmp_path, monkeypatch):
    from tunesmith.serve.api import ServeConfig, build_state

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ModelError) as info:
        build_state(ServeConfig(project_dir=tmp_path, base="x", engine="llamacpp"))
    assert "make test-llamacpp" in info.value.hint


def test_serve_names_llamacpp_among_the_engines(tmp_path):
    result = CliRunner().invoke(app, ["serve", "-p", str(tmp_path), "--base", "x", "--engine", "tgi"])
    assert result.exit_code == 2
    assert "unknown engine 'tgi'" in result.output and "--engine llamacpp" in result.output


def test_eval_output_says_which_engine_and_file_answered():
    from tunesmith.cli.evaluate import engine_line

    gguf = {"engine": "llamacpp", "quant": "f16", "file": "/p/runs/r/export/model-f16.gguf"}
    base = {"engine": "llamacpp", "quant": "f16", "file": "/p/.tunesmith/gguf/tiny-0123456789-f16.gguf"}
    assert engine_line({"engine": {"tuned": gguf, "base": base}}) == (
        "answered by: tuned llama.cpp, f16 (model-f16.gguf); base llama.cpp, f16 (tiny-0123456789-f16.gguf)")
    lora = {**gguf, "lora": "/p/runs/r/export/adapter-f16.gguf"}
    assert engine_line({"engine": {"tuned": lora}}) == (
        "answered by: tuned llama.cpp, f16 (model-f16.gguf) with GGUF adapter adapter-f16.gguf")
    int8 = {"engine": "transformers", "dtype": "float32", "quant": "int8"}
    assert engine_line({"engine": {"tuned": int8, "base": int8}}) == (
        "answered by: tuned transformers, weight-only int8; base transformers, weight-only int8")
    assert engine_line({"engine": {"tuned": {"engine": "transformers"}, "base": {"engine": "transformers"}}}) is None


# -- everywhere: the cache key ---------------------------------------------------------------------


def test_cache_key_separates_engines_and_quantisations(base_exports, tiny_model_dir, tmp_path):
    from tunesmith.evaluate.cache import cache_key
    from tunesmith.inference.local import LocalBackend

    files, said = base_exports
    assert len(said) == 2 and "exporting" in said[0]
    chat = [{"role": "user", "content": "hi"}]
    settings = DecodeSettings(max_new_tokens=MAX_NEW)
    f16 = L.LlamaCppBackend(files["f16"], tiny_model_dir, quant="f16")
    q8 = L.LlamaCppBackend(files["q8_0"], tiny_model_dir, quant="q8_0")
    local = LocalBackend(tiny_model_dir)
    keys = {cache_key(b.fingerprint, chat, settings) for b in (f16, q8, local)}
    assert len(keys) == 3
    # the same file under the same label is the same model: its answers are found again
    assert L.LlamaCppBackend(files["f16"], tiny_model_dir, quant="f16").fingerprint == f16.fingerprint
    # the sha256 comes from the export record, and is the file's
    from tunesmith.inference.backends import file_sha256

    assert f16.sha256 == file_sha256(files["f16"])
    # one byte changed in the file: another model, even with a stale record next to it
    copy = tmp_path / "model-f16.gguf"
    shutil.copy(files["f16"], copy)
    shutil.copy(files["f16"].with_name(files["f16"].name + ".json"), tmp_path / "model-f16.gguf.json")
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    assert L.LlamaCppBackend(copy, tiny_model_dir, quant="f16").fingerprint != f16.fingerprint
    # the same size, rewritten after its record (a re-export cut before its record): hashed, not trusted
    import os
    import time

    same = tmp_path / "same" / "model-f16.gguf"
    same.parent.mkdir()
    shutil.copy(files["f16"], same)
    shutil.copy(files["f16"].with_name(files["f16"].name + ".json"), same.with_name(same.name + ".json"))
    data = bytearray(same.read_bytes())
    data[-1] ^= 1
    time.sleep(0.01)
    same.write_bytes(bytes(data))
    os.utime(same, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # clearly after the record
    assert L.gguf_sha256(same) == file_sha256(same) != f16.sha256


def test_base_export_is_made_once(base_exports, tiny_model_dir):
    files, _ = base_exports
    said: list[str] = []
    again = L.base_gguf(types.SimpleNamespace(root=files["f16"].parents[2]), str(tiny_model_dir), tiny_model_dir,
                        "f16", said.append)
    assert again == files["f16"] and said == []


# -- with llama.cpp ----------------------------------------------------------------------------------


def _merged_backend(project_root: Path):
    """The run's LoRA merged into its base with its weights at f16 (the model the f16 file holds, which is
    what the export promises to equal), answering through the transformers engine: the reference."""
    from tunesmith.project import load_project
    from tunesmith.ship.gguf_export import InMemoryBackend
    from tunesmith.ship.gguf_quant import round_like_file
    from tunesmith.ship.merge import load_merged, locate_run

    from tunesmith.models.resolve import tokenizer_in

    run = locate_run(load_project(project_root), RUN)
    model, _ = load_merged(run, device="cpu")
    round_like_file(model, "f16")
    return InMemoryBackend(model, tokenizer_in(run.tokenizer_dir), run.checkpoint_dir), run


def _answers(project_root: Path, quant: str) -> list[tuple[str, int, str]]:
    from tunesmith.evaluate.items import test_items
    from tunesmith.project import load_project
    from tunesmith.ship.merge import locate_run

    proj = load_project(project_root)
    run = locate_run(proj, RUN)
    gguf = L.run_gguf(proj, run, quant, lambda _m: None)
    gens = L.LlamaCppBackend(gguf, run.tokenizer_dir, quant=quant).generate(
        [it.chat for it in test_items(proj)], DecodeSettings(max_new_tokens=MAX_NEW))
    return [(g.text, g.output_tokens, g.finish_reason) for g in gens]


@pytest.fixture(scope="module")
def parity_project(tmp_path_factory, tiny_model_dir):
    """`project` with its adapter drawn from a fixed seed. get_peft_model draws lora_A from torch's global
    generator, whose state differs from one pytest session to the next; the tiny random model's top two
    logits are often within 1e-3 of each other, about what llama.cpp's f16 arithmetic and torch's fp32 differ
    by, so on some adapters one greedy token flipped (1 of 8 seeds tried, whatever the thread counts)."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _new_project(tmp_path_factory.mktemp("llamacpp-parity"), tiny_model_dir)


@needs_llamacpp
def test_f16_export_answers_like_the_merged_model(parity_project):
    from tunesmith.evaluate.items import test_items
    from tunesmith.project import load_project

    proj = load_project(parity_project)
    chats, settings = [it.chat for it in test_items(proj)], DecodeSettings(max_new_tokens=MAX_NEW)
    reference, run = _merged_backend(parity_project)
    want = reference.generate(chats, settings)
    # pinned: llama.cpp's default follows torch's thread setting, which other tests change
    exported = L.LlamaCppBackend(L.run_gguf(proj, run, "f16", lambda _m: None), run.tokenizer_dir, quant="f16",
                                 n_threads=1)
    got = exported.generate(chats, settings)
    assert [(g.text, g.output_tokens, g.finish_reason) for g in got] == \
        [(w.text, w.output_tokens, w.finish_reason) for w in want]


@needs_llamacpp
def test_constrained_answers_are_masked_by_the_grammar_like_the_merged_models(parity_project):
    """Under a JSON schema the tiny random model (which never writes JSON by itself) gives answers that
    parse and follow it, token for token the ones the merged model gives under the same grammar through
    the transformers engine; one whose budget runs out is steered closed ("length") and still parses."""
    from tunesmith.evaluate.items import test_items
    from tunesmith.inference.constraints import Constraint
    from tunesmith.project import load_project

    proj = load_project(parity_project)
    chats = [it.chat for it in test_items(proj)][:8]
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "note": {"type": "string"}},
              "required": ["name", "note"], "additionalProperties": False}
    settings = DecodeSettings(max_new_tokens=12, constraint=Constraint.json_schema(schema))
    reference, run = _merged_backend(parity_project)
    want = reference.generate(chats, settings)
    exported = L.LlamaCppBackend(L.run_gguf(proj, run, "f16", lambda _m: None), run.tokenizer_dir, quant="f16",
                                 n_threads=1)
    got = exported.generate(chats, settings)
    for g in got:
        assert set(json.loads(g.text)) == {"name", "note"}, g.text
    assert "length" in {g.finish_reason for g in got}  # the closing steer ran
    assert [(g.text, g.finish_reason) for g in got] == [(w.text, w.finish_reason) for w in want]
    free = exported.generate(chats, DecodeSettings(max_new_tokens=12))
    assert sum(_parses(g.text) for g in free) < len(free)  # without the grammar they do not all parse


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@needs_llamacpp
def test_q8_0_agreement_with_the_f16_file_is_reported(project, capsys):
    """Lossy: reported as k/n, not required. Before `repacks_weights`, every quantised file crashed
    llama.cpp on AMX CPUs (SIGSEGV in llama_decode); now it answers in this process."""
    got = _answers(project, "q8_0")
    want = _answers(project, "f16")
    agree = sum(g[0] == w[0] for g, w in zip(got, want))
    with capsys.disabled():
        print(f"\nq8_0 export: greedy answers equal the f16 file's on {agree}/{len(want)} test prompts")
    assert len(got) == len(want) and all(0 < g[1] <= MAX_NEW for g in got)


def test_weight_repacking_is_off_on_amx_cpus_and_can_be_forced(monkeypatch):
    from tunesmith import cpu

    monkeypatch.delenv("TUNESMITH_LLAMACPP_REPACK", raising=False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "amx_tile", "amx_bf16"}))
    assert not L.repacks_weights()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2"}))
    assert L.repacks_weights()
    monkeypatch.setattr(cpu, "cpu_flags", frozenset)  # no /proc/cpuinfo: no flags, no AMX
    assert L.repacks_weights()
    for off in ("0", "off", "False"):
        monkeypatch.setenv("TUNESMITH_LLAMACPP_REPACK", off)
        assert not L.repacks_weights()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"amx_tile"}))
    for on in ("1", "yes"):
        monkeypatch.setenv("TUNESMITH_LLAMACPP_REPACK", on)
        assert L.repacks_weights()


def test_the_repack_setting_is_in_the_cache_key_and_the_record(base_exports, tiny_model_dir, monkeypatch):
    files, _ = base_exports
    monkeypatch.setenv("TUNESMITH_LLAMACPP_REPACK", "1")
    on = L.LlamaCppBackend(files["f16"], tiny_model_dir, quant="f16")
    monkeypatch.setenv("TUNESMITH_LLAMACPP_REPACK", "0")
    off = L.LlamaCppBackend(files["f16"], tiny_model_dir, quant="f16")
    assert on.fingerprint != off.fingerprint
    assert (on.describe()["repack"], off.describe()["repack"]) == (True, False)


@needs_llamacpp
def test_the_load_passes_the_repack_setting_to_llama_cpp(base_exports, tiny_model_dir, monkeypatch):
    """`Llama` takes no `use_extra_bufts`; `_load_llama` sets it in the parameters the load reads, and
    puts llama-cpp-python's default function back afterwards."""
    import llama_cpp.llama as high_level

    files, _ = base_exports
    low = high_level.llama_cpp
    before = low.llama_model_default_params
    seen: list[bool] = []
    real_load = low.llama_model_load_from_file

    def spy(path, params):
        seen.append(bool(params.use_extra_bufts))
        return real_load(path, params)

    monkeypatch.setattr(low, "llama_model_load_from_file", spy)
    for flag in ("0", "1"):
        monkeypatch.setenv("TUNESMITH_LLAMACPP_REPACK", flag)
        L.LlamaCppBackend(files["f16"], tiny_model_dir, quant="f16").llama(64)
    assert seen == [False, True]
    assert low.llama_model_default_params is before


@needs_llamacpp
def test_a_file_llama_cpp_cannot_load_says_so(tmp_path, tiny_model_dir):
    bad = tmp_path / "model-f16.gguf"
    bad.write_bytes(b"GGUF but not really")
    backend = L.LlamaCppBackend(bad, tiny_model_dir, quant="f16")
    with pytest.raises(ModelError) as info:
        backend.generate([[{"role": "user", "content": "hi"}]], DecodeSettings(max_new_tokens=2))
    assert info.value.message.startswith(f"llama.cpp cannot load {bad}: ")
    assert "tunesmith export RUN --force" in info.value.hint


@needs_llamacpp
def test_eval_engine_llamacpp_reports_and_stores_the_engine(project):
    result = CliRunner().invoke(app, ["eval", RUN, "-p", str(project), "--engine", "llamacpp", "--json",
                                      "--no-judge"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["engine"]["tuned"]["engine"] == "llamacpp"
    assert summary["engine"]["tuned"]["quant"] == "f16"
    assert summary["engine"]["base"]["quant"] == "f16"
    assert Path(summary["engine"]["tuned"]["file"]).name == "model-f16.gguf"
    from tunesmith.project import load_project

    with load_project(project).registry().connection(create=False) as conn:
        stored = conn.execute("SELECT settings FROM evaluations WHERE subject = ? AND split = 'test' "
                              "ORDER BY id DESC LIMIT 1", (f"{RUN}@llamacpp-f16",)).fetchone()
    assert json.loads(stored[0])["engine"]["quant"] == "f16"
    # under its own name: the run's own (checkpoint) scores, which the card, gate and compare read, stay apart
    from tunesmith.evaluate.store import EvalStore

    assert EvalStore(load_project(project).registry()).latest(RUN, "test") is None
    again = CliRunner().invoke(app, ["eval", RUN, "-p", str(project), "--engine", "llamacpp", "--json", "--no-judge"])
    assert json.loads(again.stdout)["summary"]["speed"]["tuned"]["cached"] is True


@needs_llamacpp
def test_serve_engine_llamacpp_answers_like_the_backend(project):
    import httpx

    from tunesmith.serve.api import ServeConfig, build_state, start_in_thread

    config = ServeConfig(project_dir=project, engine="llamacpp", adapters=[("tuned", RUN)], port=0,
                         max_tokens=MAX_NEW)
    state = build_state(config)
    server = start_in_thread(state, config)
    try:
        chat = [{"role": "user", "content": "Give me a JSON object."}]
        reply = httpx.post(f"{server.url}/chat/completions", timeout=60,
                           json={"model": "tuned", "messages": chat, "temperature": 0, "max_tokens": MAX_NEW})
        assert reply.status_code == 200, reply.text
        text = reply.json()["choices"][0]["message"]["content"]
        system = state.base.system_prompt
        full = ([{"role": "system", "content": system}] if system else []) + chat
        assert text == state.engine.backend.generate([full], DecodeSettings(max_new_tokens=MAX_NEW))[0].text
        constrained = httpx.post(f"{server.url}/chat/completions", timeout=60,
                                 json={"model": "tuned", "messages": chat, "temperature": 0, "max_tokens": MAX_NEW,
                                       "response_format": {"type": "json_object"}})
        assert constrained.status_code == 200, constrained.text
        assert isinstance(json.loads(constrained.json()["choices"][0]["message"]["content"]), dict)
        schema = {"type": "object", "properties": {"tags": {"type": "array", "contains": {"const": "x"}}}}
        unsupported = httpx.post(f"{server.url}/chat/completions", timeout=60, json={
            "model": "tuned", "messages": chat,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
        assert unsupported.status_code == 400, unsupported.text
        assert "contains cannot be enforced" in unsupported.json()["error"]["message"]
        refused = httpx.post(f"{server.url}/adapters", json={"name": "b", "source": RUN}, timeout=30)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["message"].startswith("--engine llamacpp serves one model (tuned) and "
                                                             "cannot load adapters")
    finally:
        server.stop()


# -- --gguf-adapter: the base model's GGUF with the run's LoRA as a GGUF adapter ------------------------


def test_eval_report_names_the_transformers_engine_by_default(tmp_path, tiny_model_dir):
    root = _new_project(tmp_path, tiny_model_dir)  # its own project: `project`'s RUN has no checkpoint scores
    result = CliRunner().invoke(app, ["eval", RUN, "-p", str(root), "--json", "--no-judge"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["summary"]["engine"]["tuned"] == {"engine": "transformers", "dtype": "float32"}
    page = Path(out["report"]).read_text(encoding="utf-8")
    assert "<dt>Answered by</dt><dd>tuned: transformers, float32; base: transformers, float32</dd>" in page


@needs_llamacpp
def test_gguf_adapter_refuses_a_full_fine_tune(project, tiny_model_dir):
    from tunesmith.project import load_project

    full = "20250101-000002-bbbb-full"
    registry = load_project(project).registry()
    plan = {"settings": {"method": {"value": "full", "source": "test", "why": "made by hand"}}, "derived": {}}
    run_dir = registry.create_run(full, project_root=str(project), base_model=str(tiny_model_dir), method="full",
                                  config={}, plan=plan, data={})
    shutil.copytree(tiny_model_dir, run_dir / "model")
    registry.set_status(full, "completed")
    result = CliRunner().invoke(app, ["eval", full, "-p", str(project), "--engine", "llamacpp", "--gguf-adapter",
                                      "--json"])
    assert result.exit_code == 2, result.output
    error = _error(result)
    assert error["message"] == f"--gguf-adapter: run {full} is a full fine-tune, it has no LoRA adapter"
    assert error["hint"] == "evaluate its merged GGUF export: leave out --gguf-adapter"
    assert not (run_dir / "export").exists()


def _greedy(backend: L.LlamaCppBackend, chats: list) -> list[str]:
    return [g.text for g in backend.generate(chats, DecodeSettings(max_new_tokens=MAX_NEW))]


@needs_llamacpp
def test_gguf_adapter_answers_like_the_merged_export(project, capsys):
    """The base file + the adapter file against the merged f16 file, greedy, on every prompt of the
    project (test and train). llama.cpp adds B·A·scale at run time in f16/f32 where the merged file
    rounded base + B·A to f16 once: a near-tie on a random model can flip, so agreement is reported."""
    from tunesmith.evaluate.items import examples_as_items, test_items
    from tunesmith.project import load_project
    from tunesmith.ship.merge import locate_run

    proj = load_project(project)
    run = locate_run(proj, RUN)
    said: list[str] = []
    adapter = L.run_adapter_gguf(proj, run, "f16", said.append)
    assert adapter == run.run_dir / "export" / "adapter-f16.gguf" and adapter.is_file()
    assert any("no GGUF adapter yet" in s for s in said)
    assert L.run_adapter_gguf(proj, run, "q8_0", said.append) == adapter  # adapters stay 16-bit
    base = L.base_gguf(proj, run.base_ref, run.base_path, "f16", said.append)
    # one thread each: llama.cpp otherwise follows torch's thread count, which other tests change
    with_adapter = L.LlamaCppBackend(base, run.tokenizer_dir, quant="f16", lora_path=adapter, n_threads=1)
    merged = L.LlamaCppBackend(L.run_gguf(proj, run, "f16", said.append), run.tokenizer_dir, quant="f16",
                               n_threads=1)
    plain = L.LlamaCppBackend(base, run.tokenizer_dir, quant="f16", n_threads=1)
    items = test_items(proj) + examples_as_items(project / "data" / "train.jsonl", proj.system_prompt,
                                                 prefix="train", what="file")
    chats = [it.chat for it in items]
    got, want, without = _greedy(with_adapter, chats), _greedy(merged, chats), _greedy(plain, chats)
    agree = sum(g == w for g, w in zip(got, want))
    changed = sum(w != b for w, b in zip(want, without))
    with capsys.disabled():
        print(f"\n--gguf-adapter: greedy answers equal the merged f16 export's on {agree}/{len(chats)} prompts "
              f"(the LoRA changes {changed}/{len(chats)} of the base model's answers)")
    assert changed > 0  # the adapter matters here, so agreeing with the merged file means something
    assert agree >= len(chats) / 2
    assert with_adapter.fingerprint != plain.fingerprint


@needs_llamacpp
def test_eval_gguf_adapter_is_stored_apart_and_reported(project):
    result = CliRunner().invoke(app, ["eval", RUN, "-p", str(project), "--engine", "llamacpp", "--gguf-adapter",
                                      "--json", "--no-judge"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["subject"] == f"{RUN}@llamacpp-f16+lora"
    tuned = out["summary"]["engine"]["tuned"]
    assert Path(tuned["lora"]) == project / "runs" / RUN / "export" / "adapter-f16.gguf"
    assert Path(tuned["file"]).parent == project / ".tunesmith" / "gguf"  # the base model's file
    assert out["summary"]["engine"]["base"]["lora"] is None
    from tunesmith.evaluate.store import EvalStore
    from tunesmith.project import load_project

    store = EvalStore(load_project(project).registry())
    assert store.latest(f"{RUN}@llamacpp-f16+lora", "test") is not None
    page = Path(out["report"]).read_text(encoding="utf-8")
    assert f"tuned: llama.cpp, f16 ({Path(tuned['file']).name}) with GGUF adapter adapter-f16.gguf" in page


@needs_llamacpp
def test_decode_speed_benchmark_rows_run_and_agree_on_the_tiny_model(base_exports, tiny_model_dir, monkeypatch):
    """benchmarks/decode_speed.py's llama.cpp and tunesmith rows, on the tiny model's f16 export: both run
    through today's engine calls (a renamed argument once broke the benchmark unnoticed) and answer the
    same greedy text, the lean step (tunesmith-1) and the forward (tunesmith-forward-1) alike."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("decode_speed", root / "benchmarks" / "decode_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    chats = bench._chats(2)
    gguf = bench._run_llamacpp(Path(base_exports[0]["f16"]), tiny_model_dir, "f16", chats, MAX_NEW)
    lean = bench._run_tunesmith(tiny_model_dir, chats, MAX_NEW, batched=False)
    monkeypatch.setenv("TUNESMITH_LEAN_DECODE", "0")
    forward = bench._run_tunesmith(tiny_model_dir, chats, MAX_NEW, batched=False)
    assert gguf["tokens"] > 0 and gguf["answers"] == lean["answers"] == forward["answers"]


# -- serve --engine llamacpp --gguf-adapter: GGUF adapters hot-swapped on the base's GGUF ---------------


def test_gguf_adapter_serving_needs_the_llamacpp_engine(tiny_model_dir):
    from tunesmith.serve.api import ServeConfig, build_state

    with pytest.raises(UsageError) as info:
        build_state(ServeConfig(base=str(tiny_model_dir), gguf_adapters=True))
    assert info.value.message == "--gguf-adapter is for --engine llamacpp, and this server's engine is transformers"
    assert info.value.hint == ("add --engine llamacpp, or leave --gguf-adapter out (the transformers engine "
                               "hot-swaps PEFT adapters itself)")


def test_two_adapters_on_llamacpp_without_gguf_adapter_say_how(tmp_path):
    from tunesmith.serve.api import ServeConfig, build_state

    config = ServeConfig(project_dir=tmp_path, base="builtin:smollm2-135m-instruct", engine="llamacpp",
                         adapters=[("a", "run-a"), ("b", "run-b")])
    with pytest.raises(UsageError) as info:
        build_state(config)
    assert "add --gguf-adapter to hot-swap them as GGUF adapters on the base" in info.value.hint


@needs_llamacpp
def test_serve_gguf_adapters_hot_swaps_each_request_to_its_adapter(project, tmp_path, tiny_model_dir):
    """A run's adapter (its own lora-gguf export) and a PEFT directory POSTed later (converted once) are
    loaded onto the base's GGUF; requests switching between them and the base each get the answer
    `Llama(lora_path=...)` gives with that adapter alone (what `eval --gguf-adapter` answers with)."""
    import httpx

    from fixtures.serving import make_adapter
    from tunesmith.project import load_project
    from tunesmith.serve.api import ServeConfig, build_state, start_in_thread
    from tunesmith.ship.merge import locate_run

    allowed = tmp_path / "adapters"
    other = make_adapter(tiny_model_dir, allowed / "other", seed=3)
    config = ServeConfig(project_dir=project, engine="llamacpp", gguf_adapters=True, adapters=[("tuned", RUN)],
                         allow_dirs=[allowed], port=0, max_tokens=MAX_NEW)
    said: list[str] = []
    state = build_state(config, said.append)
    server = start_in_thread(state, config)
    try:
        proj = load_project(project)
        run = locate_run(proj, RUN)
        base_file = state.engine.backend.gguf_path
        threads = state.engine.backend.n_threads
        loaded = httpx.post(f"{server.url}/adapters", json={"name": "other", "source": str(other)}, timeout=120)
        assert loaded.status_code == 201, loaded.text
        files = {"tuned": L.run_adapter_gguf(proj, run, "f16", said.append),
                 "other": next((project / ".tunesmith" / "gguf" / "adapters").glob("adapter-*-f16.gguf")),
                 "base": None}
        system = state.base.system_prompt
        chats = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
                 for q in ("Give me a JSON object.", "What is two and two?")]
        expected = {name: _greedy(L.LlamaCppBackend(base_file, run.tokenizer_dir, quant="f16", lora_path=path,
                                                    n_threads=threads), chats)
                    for name, path in files.items()}
        assert len({tuple(v) for v in expected.values()}) == 3  # the three models answer differently here

        def ask(model: str, index: int) -> str:
            reply = httpx.post(f"{server.url}/chat/completions", timeout=60, json={
                "model": model, "messages": chats[index], "temperature": 0, "max_tokens": MAX_NEW})
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["message"]["content"]

        base_name = state.base.name
        for model, index in (("tuned", 0), ("other", 0), (base_name, 0), ("tuned", 1), (base_name, 1),
                             ("other", 1), ("tuned", 0)):
            assert ask(model, index) == expected["base" if model == base_name else model][index], (model, index)
        assert httpx.delete(f"{server.url}/adapters/tuned", timeout=60).status_code == 200
        gone = httpx.post(f"{server.url}/chat/completions", timeout=60,
                          json={"model": "tuned", "messages": chats[0], "max_tokens": 2})
        assert gone.status_code == 404
        assert ask("other", 1) == expected["other"][1]
        # an adapter llama.cpp cannot take (DoRA) is refused with the converter's reason and a serving hint
        dora = _dora_adapter(tiny_model_dir, allowed / "dora")
        refused = httpx.post(f"{server.url}/adapters", json={"name": "dora", "source": str(dora)}, timeout=120)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["message"].startswith("cannot load adapter dora as a GGUF adapter: cannot export this adapter "
                                           "to GGUF: ") and "use_dora is true" in error["message"]
        assert error["message"].endswith("(serve it with --engine transformers, which applies any PEFT LoRA, or "
                                         "check that it was trained on this base)")
        assert error["param"] == "source"
        assert ask("other", 0) == expected["other"][0]  # the server goes on
    finally:
        server.stop()


def _dora_adapter(model_dir: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).save_pretrained(str(out))
    return out
