"""`--quant int8`: weight-only int8 on the transformers engine (lossy, reported like a quantised GGUF)."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from typer.testing import CliRunner

from datagen import add_run, sealed_project, write_jsonl
from tunesmith.cli import app
from tunesmith.errors import ModelError, UsageError
from tunesmith.inference.int8 import int8_available, int8_linear, quantize_int8
from tunesmith.inference.local import LocalBackend
from tunesmith.inference.types import DecodeSettings

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch has no torch._weight_int8pack_mm")

RUN = "20250101-000001-bbbb-lora"


def test_an_int8_layer_stays_within_its_quantisation_error():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    q = int8_linear()(layer)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.shape == (96, 64) and q.scales.shape == (96,)
    x = torch.randn(5, 3, 64)
    with torch.no_grad():
        exact, approx = layer(x), q(x)
        # what the kernel must compute: the bfloat16 input times the dequantised weights
        dequantised = q.weight_int8.float() * q.scales.float()[:, None]
        expected = torch.nn.functional.linear(x.bfloat16().float(), dequantised, layer.bias)
    assert approx.shape == exact.shape and approx.dtype == torch.float32
    assert torch.allclose(approx, expected, rtol=2e-2, atol=2e-2)
    relative = (approx - exact).norm() / exact.norm()
    assert 0 < relative < 0.02  # lossy, but by the rounding of 8 bits only


def test_quantising_merges_the_adapter_and_replaces_every_linear(tiny_model_dir, tmp_path):
    from fixtures.serving import make_adapter
    from tunesmith.inference.loading import load_model

    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)
    model = quantize_int8(load_model(tiny_model_dir, adapter, device="cpu", dtype="float32"), "cpu")
    assert not hasattr(model, "peft_config") or not model.peft_config
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Int8Linear" in kinds and "Linear" not in kinds and not any("lora" in k.lower() for k in kinds)


def test_int8_is_a_cpu_kernel():
    with pytest.raises(ModelError) as info:
        quantize_int8(torch.nn.Sequential(torch.nn.Linear(2, 2)), "cuda:0")
    assert info.value.message == "--quant int8 is a CPU kernel; this model runs on cuda:0"
    assert "--device cpu" in info.value.hint


def test_a_model_with_nothing_to_quantise_says_so():
    with pytest.raises(ModelError) as info:
        quantize_int8(torch.nn.Sequential(torch.nn.ReLU()), "cpu")
    assert info.value.message == "Sequential has no nn.Linear layer to quantise"


def test_the_backend_takes_int8_only(tiny_model_dir):
    with pytest.raises(ModelError) as info:
        LocalBackend(tiny_model_dir, quant="int4")
    assert info.value.message == "quantisation 'int4' is not one the transformers engine has"
    assert "--engine llamacpp" in info.value.hint


def test_int8_answers_under_its_own_fingerprint_close_to_float32(tiny_model_dir):
    chats = [[{"role": "user", "content": f"Item {i}: say something"}] for i in range(6)]
    settings = DecodeSettings(max_new_tokens=12, temperature=0.0)
    full, int8 = LocalBackend(tiny_model_dir, batch_size=4), LocalBackend(tiny_model_dir, batch_size=4, quant="int8")
    assert full.fingerprint != int8.fingerprint
    a, b = full.generate(chats, settings), int8.generate(chats, settings)
    assert all(g.output_tokens > 0 for g in b)
    # greedy answers of a random tiny model sit on near-ties; most must still agree token for token
    same = sum(x.text == y.text for x, y in zip(a, b))
    print(f"int8 vs float32 greedy answers: {same}/{len(a)} identical")
    assert same >= len(a) // 2


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    from fixtures.serving import make_adapter

    root = tmp_path_factory.mktemp("int8-project")
    sealed_project(root, tiny_model_dir, 16, max_new_tokens=6,
                   data={"regression": "regression.jsonl", "test_fraction": 0.25})
    write_jsonl(root / "regression.jsonl", [{"id": "always", "prompt": "anything",
                                              "assertions": [{"type": "not_contains", "value": "ZZZZZZ"}]}])
    add_run(root, RUN, method="lora", base_model=tiny_model_dir,
            adapter=make_adapter(tiny_model_dir, root.parent / "int8-adapter", seed=2))
    return root


def test_eval_int8_is_stored_apart_and_says_who_answered(project):
    result = CliRunner().invoke(app, ["eval", RUN, "-p", str(project), "--quant", "int8", "--no-judge", "--json"])
    assert result.exit_code in (0, 1), result.output  # 1: the gate may fail on a random model
    out = json.loads(result.stdout)
    assert out["subject"] == f"{RUN}@transformers-int8"
    engines = out["summary"]["engine"]
    assert engines["tuned"]["quant"] == "int8" and engines["base"]["quant"] == "int8"
    from tunesmith.evaluate.store import EvalStore
    from tunesmith.project import load_project

    store = EvalStore(load_project(project).registry())
    assert store.latest(f"{RUN}@transformers-int8", "test") is not None  # stored under its own name
    assert store.latest(RUN, "test") is None  # not as the run's own, full-precision score
    # the gate compares like with like: the base answered in int8 in this very call, not its float32 scores
    assert out["gate"]["baseline"] == "base@transformers-int8"
    run_dir = project / "runs" / RUN
    assert (run_dir / "report@transformers-int8.html").is_file()
    assert not (run_dir / "report.html").exists()  # the checkpoint's own report is not replaced
    human = CliRunner().invoke(app, ["eval", RUN, "-p", str(project), "--quant", "int8", "--no-judge"])
    assert "answered by: tuned transformers, weight-only int8; base transformers, weight-only int8" in human.output


def test_int8_decodes_under_the_contracts_grammar(project):
    """The grammar mask reads the logits width from the head, which int8 replaced (no `.weight`)."""
    result = CliRunner().invoke(app, ["eval", RUN, "-p", str(project), "--quant", "int8", "--constrained",
                                      "--no-judge", "--json"])
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["summary"]["constrained"]
    # baseline tries the base constrained to the contract by default (baseline.constrained)
    result = CliRunner().invoke(app, ["baseline", "-p", str(project), "--quant", "int8", "--json"])
    assert result.exit_code in (0, 1), result.output
    assert "error" not in json.loads(result.stdout)


def test_int8_runs_on_the_cpu_unless_a_device_is_asked_for(tiny_model_dir, monkeypatch):
    import tunesmith.inference.local as local

    monkeypatch.setattr(local, "default_device", lambda: "cuda")  # a machine with a GPU
    assert LocalBackend(tiny_model_dir, quant="int8").device == "cpu"
    assert LocalBackend(tiny_model_dir).device == "cuda"


def test_a_torch_without_the_kernel_is_told_what_to_do(monkeypatch):
    import tunesmith.inference.int8 as int8

    monkeypatch.setattr(int8, "int8_available", lambda: False)
    with pytest.raises(ModelError) as info:
        quantize_int8(torch.nn.Sequential(torch.nn.Linear(2, 2)), "cpu")
    assert info.value.message == "this PyTorch has no int8 weight-only kernel (torch._weight_int8pack_mm)"
    assert "upgrade torch" in info.value.hint


def test_a_hosted_run_has_nothing_to_quantise(project):
    from tunesmith.project import load_project

    hosted = "20250101-000002-cccc-hosted"
    registry = load_project(project).registry()
    registry.create_run(hosted, project_root=str(project), base_model="gpt-4o-mini", method="hosted-openai",
                        config={}, plan={}, data={})
    result = CliRunner().invoke(app, ["eval", hosted, "-p", str(project), "--quant", "int8", "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["message"] == f"run {hosted} was trained on a hosted API: there is no local model to quantise"
    assert error["hint"] == "evaluate it without --quant"


def test_vllm_is_not_given_a_quant_it_would_ignore(tiny_model_dir):
    from tunesmith.serve.api import ServeConfig, serve

    with pytest.raises(UsageError) as info:
        serve(ServeConfig(base=str(tiny_model_dir), engine="vllm", quant="int8"))
    assert info.value.message == "--quant int8 is not passed to vLLM: --engine vllm serves the checkpoint as it is"
    assert "vLLM's own options" in info.value.hint


@pytest.mark.parametrize(("args", "message", "hint"), [
    (["base", "--quant", "int8", "--endpoint", "http://127.0.0.1:9/v1"],
     "--quant int8 quantises a model on this machine, not an --endpoint", "leave out --quant"),
])
def test_eval_int8_refuses_what_it_cannot_quantise(project, args, message, hint):
    result = CliRunner().invoke(app, ["eval", *args, "-p", str(project), "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["message"] == message and hint in error["hint"]


def test_serve_int8_serves_the_run_merged_and_refuses_adapters(project):
    from tunesmith.serve.api import ServeConfig, build_state, start_in_thread

    from tunesmith.inference.int8_kernel import kernel

    config = ServeConfig(project_dir=project, port=0, quant="int8", adapters=[("tuned", RUN)])
    said: list[str] = []
    running = start_in_thread(build_state(config, said.append), config)
    assert f"int8 products by the {kernel().name} kernel" in "\n".join(said)  # which kernel answers is said
    try:
        chat = [{"role": "user", "content": "Item 3: hello"}]
        reply = httpx.post(f"{running.url}/chat/completions", timeout=60, json={
            "model": "tuned", "max_tokens": 6, "temperature": 0, "messages": chat})
        assert reply.status_code == 200, reply.text
        # the same model eval --quant int8 answers with: the run merged, then quantised
        from tunesmith.project import load_project

        run = load_project(project).registry().get(RUN).model(load_project(project).base_model)
        local = LocalBackend(run.checkpoint_dir, adapter_path=run.adapter_dir, quant="int8")
        expected = local.generate([[{"role": "system", "content": load_project(project).system_prompt}, *chat]]
                                  if load_project(project).system_prompt else [chat],
                                  DecodeSettings(max_new_tokens=6, temperature=0.0))[0]
        assert reply.json()["choices"][0]["message"]["content"] == expected.text
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        shaped = httpx.post(f"{running.url}/chat/completions", timeout=60, json={
            "model": "tuned", "max_tokens": 12, "messages": chat,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})
        assert shaped.status_code == 200, shaped.text  # the grammar reads the int8 head's width
        load = httpx.post(f"{running.url}/adapters", timeout=30, json={"name": "other", "source": RUN})
        assert load.status_code == 400, load.text
        assert load.json()["error"]["message"].startswith(
            "--quant int8 serves one model (tuned) and cannot load adapters (serve without --quant")
    finally:
        running.stop()


def test_serve_int8_serves_one_model(tiny_model_dir):
    from tunesmith.serve.api import ServeConfig, build_state

    with pytest.raises(UsageError) as info:
        build_state(ServeConfig(base=str(tiny_model_dir), quant="int8", adapters=[("a", "x"), ("b", "y")]))
    assert info.value.message == "--quant int8 serves one model, and 2 --adapter flags were given"
    assert "without --quant" in info.value.hint


def test_serve_int8_adapter_needs_the_project(tiny_model_dir, tmp_path):
    from tunesmith.serve.api import ServeConfig, build_state

    with pytest.raises(UsageError) as info:
        build_state(ServeConfig(base=str(tiny_model_dir), quant="int8", adapters=[("a", "run")],
                                project_dir=tmp_path / "nowhere"))
    assert info.value.message == "--quant int8 --adapter serves a run of the project, which needs the project"
