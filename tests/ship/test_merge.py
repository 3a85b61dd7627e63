"""`tunesmith merge`: the adapter folded into the base, saved atomically, verified token for token."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.errors import ExportError, ModelError, UsageError
from tunesmith.evaluate.types import DecodeSettings, EvalItem, Generation
from tunesmith.ship.merge import (
    MERGE_RECORD,
    Verification,
    check_output_dir,
    compare_greedy,
    merge_load_kwargs,
    merge_run,
)

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# --- load kwargs: never quantized -------------------------------------------------------------


@pytest.mark.parametrize("device,bf16,dtype", [("cpu", False, "float32"), ("cuda", True, "bfloat16"),
                                               ("cuda", False, "float32")])
def test_qlora_base_is_reloaded_in_16_or_32_bit_never_4_bit(device, bf16, dtype):
    kwargs = merge_load_kwargs("qlora", device, bf16_supported=bf16)
    assert "quantization_config" not in kwargs and not any("4bit" in k or "8bit" in k for k in kwargs)
    assert kwargs["dtype"] == dtype
    assert merge_load_kwargs("lora", device, bf16_supported=bf16) == kwargs


def test_load_kwargs_refuse_a_full_fine_tune():
    with pytest.raises(UsageError, match="a full run has no adapter to merge"):
        merge_load_kwargs("full", "cpu", bf16_supported=False)


# --- verification bookkeeping ----------------------------------------------------------------


class _Fixed:
    def __init__(self, texts):
        self.texts = texts

    def generate(self, chats, settings, progress=None):
        return [Generation(t, "stop") for t in self.texts[: len(chats)]]


def test_compare_greedy_counts_and_names_the_differing_prompts():
    items = [EvalItem(f"test:{i}", [{"role": "user", "content": str(i)}]) for i in range(8)]
    ref = _Fixed([str(i) for i in range(8)])
    got = _Fixed(["x" if i in (1, 2, 3, 5, 6, 7) else str(i) for i in range(8)])
    v = compare_greedy(ref, got, items, DecodeSettings(max_new_tokens=4), what="a vs b", computed_on="8 prompts")
    assert (v.identical, v.total, v.ok) == (2, 8, False)
    assert v.summary() == "greedy outputs: 2/8 identical (a vs b; 8 prompts)"
    with pytest.raises(ExportError) as err:
        v.require("greedy outputs", allow=False, hint="the hint")
    assert str(err.value) == ("greedy outputs: 2/8 identical (a vs b); they differ on "
                              "test:1, test:2, test:3, test:5, test:6 and 1 more")
    assert err.value.hint == "the hint"
    v.require("greedy outputs", allow=True, hint="")  # --allow-mismatch: no error


# --- merging ---------------------------------------------------------------------------------


def test_merge_equals_the_adapter_model_and_is_a_plain_checkpoint(ship, tmp_path):
    n, max_new = ship["prompts"], ship["max_new"]
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.items import test_items
    from tunesmith.project import load_project

    out = tmp_path / "merged"
    outcome = merge_run(ship["root"], ship["runs"]["lora"], out)
    v = outcome.verification
    assert (v.identical, v.total) == (n, n) and v.mismatched == []
    assert outcome.dtype == "float32" and outcome.method == "lora"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "chat_template.jinja", MERGE_RECORD} <= names
    assert "adapter_config.json" not in names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    assert (out / "chat_template.jinja").read_bytes() == (ship["adapter"] / "chat_template.jinja").read_bytes()
    record = json.loads((out / MERGE_RECORD).read_text())
    assert record["run_id"] == ship["runs"]["lora"] and record["method"] == "lora" and record["dtype"] == "float32"
    assert record["verification"]["identical"] == n and record["decode"]["max_new_tokens"] == max_new
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    # not vacuous: the adapter changes what the model says
    items = test_items(load_project(ship["root"]))
    settings = DecodeSettings(max_new_tokens=max_new)
    base = LocalBackend(ship["base"]).generate([it.chat for it in items], settings)
    merged = LocalBackend(out).generate([it.chat for it in items], settings)
    assert [g.text for g in base] != [g.text for g in merged]


def test_merge_of_a_qlora_run_on_cpu_uses_the_full_precision_base(ship, tmp_path):
    outcome = merge_run(ship["root"], ship["runs"]["qlora"], tmp_path / "m", verify_n=2)
    assert outcome.method == "qlora" and outcome.dtype == "float32"
    assert (outcome.verification.identical, outcome.verification.total) == (2, 2)


def test_broken_adapters_are_named(ship, tmp_path):
    from safetensors.torch import load_file, save_file

    junk = tmp_path / "junk"
    shutil.copytree(ship["adapter"], junk)
    (junk / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    nan = tmp_path / "nan"
    shutil.copytree(ship["adapter"], nan)
    weights = load_file(str(nan / "adapter_model.safetensors"))
    weights = {k: v * float("nan") if "lora_B" in k else v for k, v in weights.items()}
    save_file(weights, str(nan / "adapter_model.safetensors"))
    add_run = ship["add_run"]
    add_run(ship["root"], "20250101-000010-junk", method="lora", base_model=ship["base"], adapter=junk)
    add_run(ship["root"], "20250101-000011-nan", method="lora", base_model=ship["base"], adapter=nan)
    with pytest.raises(ModelError, match="cannot load the adapter in .*junk/adapter onto"):
        merge_run(ship["root"], "20250101-000010-junk", tmp_path / "a", verify_n=0)
    with pytest.raises(ExportError, match="cannot fold the adapter of run 20250101-000011-nan into its base model"):
        merge_run(ship["root"], "20250101-000011-nan", tmp_path / "b", verify_n=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "f", force=True, protected={})


# --- the command line ------------------------------------------------------------------------


def test_cli_merge_human_and_json(ship, tmp_path):
    out = tmp_path / "empty-dir"
    out.mkdir()  # an empty directory is fine
    result = cli("merge", ship["runs"]["lora"][:17], "-o", out, "-p", ship["root"])
    assert result.exit_code == 0, result.output
    assert f"greedy outputs: {ship['prompts']}/{ship['prompts']} identical" in result.stdout
    assert f"merged run {ship['runs']['lora']} (lora)" in result.stdout
    result = cli("merge", ship["runs"]["lora"], "-o", tmp_path / "j", "-p", ship["root"], "--json", "--verify-n", "0")
    assert result.exit_code == 0, result.output
    out_json = json.loads(result.stdout)
    assert out_json["verification"] is None and out_json["output"] == str(tmp_path / "j")


def test_cli_merge_refuses_a_non_empty_directory_unless_forced(ship, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("merge", ship["runs"]["lora"], "-o", out, "-p", ship["root"])
    assert result.exit_code == 2
    assert f"error: -o {out.resolve()} exists and is not empty" in result.stderr and "--force" in result.stderr
    # --force replaces only an earlier merge, never somebody's directory
    result = cli("merge", ship["runs"]["lora"], "-o", out, "-p", ship["root"], "--force")
    assert result.exit_code == 2 and "replaces only earlier merges" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    merged = tmp_path / "merged"
    assert cli("merge", ship["runs"]["lora"], "-o", merged, "-p", ship["root"], "--verify-n", "1").exit_code == 0
    (merged / "stale.txt").write_text("from before")
    result = cli("merge", ship["runs"]["lora"], "-o", merged, "-p", ship["root"], "--force", "--verify-n", "1")
    assert result.exit_code == 0, result.output
    assert not (merged / "stale.txt").exists() and (merged / "model.safetensors").exists()
    assert "greedy outputs: 1/1 identical" in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no .old-* or temp left


def test_protected_paths_cannot_be_reached_sideways(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    run = tmp_path / "p" / "runs" / "r"
    (run / "adapter").mkdir(parents=True)
    data = tmp_path / "p" / "data" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("{}\n")
    protected = {"the base model": base, "the run directory": run, "the project's train data": data}
    for out in (tmp_path / "p" / ".." / "base", run / "adapter", tmp_path / "p" / "data", tmp_path / "p" / "runs" / ".." / "data"):
        with pytest.raises(UsageError, match="would overwrite"):
            check_output_dir(out.absolute(), force=True, protected=protected)
    link = tmp_path / "sneaky"
    link.symlink_to(base, target_is_directory=True)
    with pytest.raises(UsageError, match="the base model"):
        check_output_dir(link, force=True, protected=protected)


def test_merge_into_the_project_directory_is_refused(ship):
    result = cli("merge", ship["runs"]["lora"], "-o", ship["root"], "-p", ship["root"], "--force")
    assert result.exit_code == 2 and "would overwrite" in result.stderr
    assert (ship["root"] / "tunesmith.yaml").exists()


def test_merged_generation_config_stops_at_the_end_of_turn(ship, tmp_path):
    from tunesmith.models.chat import end_of_turn_ids
    from tunesmith.models.resolve import load_tokenizer

    out = tmp_path / "merged"
    merge_run(ship["root"], ship["runs"]["lora"], out, verify_n=0)
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    assert end_of_turn_ids(load_tokenizer(str(out))) <= eos


def test_a_run_without_a_chat_template_is_refused_before_any_work(ship, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(ship["adapter"], adapter)
    (adapter / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((adapter / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (adapter / "tokenizer_config.json").write_text(json.dumps(config))
    run_id = "20250101-000009-abab-notemplate"
    ship["add_run"](ship["root"], run_id, method="lora", base_model=ship["base"], adapter=adapter)
    for args in (("merge", run_id, "-o", tmp_path / "m"), ("export", run_id, "--format", "gguf")):
        result = cli(*args, "-p", ship["root"])
        assert result.exit_code == 2 and "has no chat template" in result.stderr, result.output
    assert not (tmp_path / "m").exists()


def test_cli_merge_mismatch_fails_and_writes_nothing(ship, tmp_path, monkeypatch):
    import tunesmith.ship.merge as merge_mod

    def differing(reference, candidate, items, settings, *, what, computed_on, progress=None):
        ids = [it.id for it in items]
        return Verification(what, len(ids), len(ids) - 2, ids[:2], computed_on)

    monkeypatch.setattr(merge_mod, "compare_greedy", differing)
    out = tmp_path / "m"
    result = cli("merge", ship["runs"]["lora"], "-o", out, "-p", ship["root"], "--verify-n", "3")
    assert result.exit_code == 2
    assert "error: greedy outputs: 1/3 identical (merged model vs adapter model); they differ on test:" in result.stderr
    assert "--allow-mismatch" in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]
    result = cli("merge", ship["runs"]["lora"], "-o", out, "-p", ship["root"], "--verify-n", "3", "--allow-mismatch")
    assert result.exit_code == 0, result.output
    assert "greedy outputs: 1/3 identical" in result.stdout and "warning:" in result.stdout
    assert json.loads((out / MERGE_RECORD).read_text())["verification"]["identical"] == 1


def test_cli_merge_user_errors(ship, tmp_path):
    root, runs = ship["root"], ship["runs"]
    result = cli("merge", runs["gqa"], "-o", tmp_path / "x", "-p", root)
    assert result.exit_code == 2
    assert f"run {runs['gqa']} is a full fine-tune: there is no adapter to merge" in result.stderr
    assert f"{root / 'runs' / runs['gqa'] / 'model'}" in result.stderr and "tunesmith export" in result.stderr
    result = cli("merge", runs["empty"], "-o", tmp_path / "x", "-p", root)
    assert result.exit_code == 2 and "has no trained adapter or model yet (status failed)" in result.stderr
    result = cli("merge", runs["lora"], "-o", ship["base"], "-p", root, "--force")
    assert result.exit_code == 2 and "would overwrite the base model" in result.stderr
    result = cli("merge", runs["lora"], "-o", root / "runs", "-p", root, "--force")
    assert result.exit_code == 2 and "would overwrite the run directory" in result.stderr
    result = cli("merge", runs["lora"], "-o", tmp_path / "x", "-p", root, "--verify-n", "-1")
    assert result.exit_code == 2 and "--verify-n must be 0 or more, got -1" in result.stderr
    assert not (tmp_path / "x").exists()


def test_merge_can_save_in_another_precision_and_checks_it(ship, tmp_path):
    out = tmp_path / "bf16"
    result = cli("merge", ship["runs"]["lora"], "-o", out, "-p", ship["root"], "--dtype", "bfloat16", "--allow-mismatch",
                 "--json")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["dtype"] == "bfloat16" and outcome["verification"]["total"] == ship["prompts"]
    config = json.loads((out / "config.json").read_text())
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"
    assert json.loads((out / MERGE_RECORD).read_text())["dtype"] == "bfloat16"
    bad = cli("merge", ship["runs"]["lora"], "-o", tmp_path / "x", "-p", ship["root"], "--dtype", "int4")
    assert bad.exit_code == 2 and "--dtype 'int4' is not one of" in bad.stderr


def test_a_base_stored_quantized_is_refused(tmp_path):
    from tunesmith.ship.merge import refuse_quantized_base

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "quantization_config": {"quant_method": "bitsandbytes"}}))
    with pytest.raises(ExportError) as info:
        refuse_quantized_base(tmp_path)
    assert "stored quantized (bitsandbytes)" in info.value.message and "16-bit" in info.value.hint
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    refuse_quantized_base(tmp_path)  # a plain checkpoint passes
