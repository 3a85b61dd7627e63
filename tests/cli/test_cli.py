"""The command line, through typer's runner: exit codes, --json shapes and every user-facing error."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from datagen import SYSTEM, clean_examples, write_jsonl, write_project_file
from tunesmith.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _project(tmp_path, rows, extra=""):
    write_project_file(tmp_path, extra=extra)
    write_jsonl(tmp_path / "data.jsonl", rows)
    return tmp_path


def test_help_does_not_import_heavy_libraries():
    code = "import sys; import tunesmith.cli; print(sorted(m for m in ('torch','transformers','numpy','jsonschema','pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_out = subprocess.run([sys.executable, "-m", "tunesmith", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "check" in help_out.stdout and "split" in help_out.stdout


def test_check_json_shape_and_clean_exit(tmp_path):
    _project(tmp_path, clean_examples(60))
    result = run("check", tmp_path / "data.jsonl", "--json", "--no-tokens")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"file", "examples", "findings", "stats"}
    assert report["examples"] == 60 and report["findings"] == []
    assert report["stats"]["formats"] == {"messages": 60}
    assert report["stats"]["system_prompts"] == [{"prompt": SYSTEM, "count": 60}]


def test_check_exit_1_on_errors_and_reports_all_at_once(tmp_path):
    rows = clean_examples(40) + ["{bad", {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "{}"}]},
                                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "not json"}]}]
    _project(tmp_path, rows)
    result = run("check", tmp_path / "data.jsonl", "--json", "--no-tokens")
    assert result.exit_code == 1
    checks = {(f["check"], tuple(f["lines"])) for f in json.loads(result.stdout)["findings"]}
    assert {("invalid_json_line", (41,)), ("unknown_role", (42,)), ("output_not_json", (43,))} <= checks


def test_check_human_output_has_lines_and_hints(tmp_path):
    rows = clean_examples(40)
    rows.append(rows[0])
    _project(tmp_path, rows)
    result = run("check", tmp_path / "data.jsonl", "--no-tokens")
    assert result.exit_code == 0
    assert "exact_duplicate" in result.stdout and "lines 1, 41" in result.stdout and "hint:" in result.stdout


def test_check_schema_flag_overrides_project(tmp_path):
    _project(tmp_path, clean_examples(40))
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["answer"]}))
    result = run("check", tmp_path / "data.jsonl", "--schema", schema, "--json", "--no-tokens")
    assert result.exit_code == 1
    findings = json.loads(result.stdout)["findings"]
    assert findings[0]["check"] == "output_schema" and len(findings[0]["lines"]) == 40
    assert "'answer' is a required property" in findings[0]["message"]


def test_check_with_model_measures_tokens(tmp_path, tiny_model_dir):
    _project(tmp_path, clean_examples(40), extra=f"base_model: {tiny_model_dir}\nmax_length: 40\n")
    result = run("check", tmp_path / "data.jsonl", "--json")
    report = json.loads(result.stdout)
    assert report["stats"]["tokens"]["max"] > 40
    assert any(f["check"] == "too_long" for f in report["findings"])


def test_missing_file_and_directory_messages(tmp_path):
    result = run("check", tmp_path / "nope.jsonl", "--no-tokens")
    assert result.exit_code == 2 and "no such file" in result.stderr and "hint:" in result.stderr
    result = run("check", tmp_path, "--no-tokens")
    assert result.exit_code == 2 and "is a directory" in result.stderr


def test_bad_task_kind_flag(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", clean_examples(3))
    result = run("check", tmp_path / "d.jsonl", "--task-kind", "poems", "--no-tokens")
    assert result.exit_code == 2 and "--task-kind 'poems' is not a task kind" in result.stderr
    assert "use format, style, domain or multistep" in result.stderr  # the field's choices, in its order


def test_bad_project_file_lists_every_problem(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text("task: x\ntask_kind: poems\nfoo: 1\n")
    write_jsonl(tmp_path / "data.jsonl", clean_examples(3))
    result = run("check", tmp_path / "data.jsonl", "--no-tokens")
    assert result.exit_code == 2
    for field in ("task:", "task_kind:", "foo:"):
        assert field in result.stderr


def test_debug_env_shows_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESMITH_DEBUG", "1")
    result = run("check", tmp_path / "nope.jsonl", "--no-tokens")
    assert result.exit_code != 0 and result.exception is not None


def test_split_verify_and_check_sealed_flow(tmp_path):
    _project(tmp_path, clean_examples(120))
    result = run("split", "--project", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["train_rows"] + info["test_rows"] == 120
    assert run("split", "--project", tmp_path, "--verify").exit_code == 0
    # plant a copy of a test row in train: check reports test_overlap without quoting the row
    test_rows = (tmp_path / "data" / "test.jsonl").read_text().splitlines()
    with open(tmp_path / "data" / "train.jsonl", "a") as fh:
        fh.write(test_rows[0] + "\n")
    result = run("check", tmp_path / "data" / "train.jsonl", "--json", "--no-tokens")
    assert result.exit_code == 1
    overlap = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "test_overlap"]
    assert overlap and overlap[0]["lines"] == [info["train_rows"] + 1]
    # tamper with the test set
    (tmp_path / "data" / "test.jsonl").write_text("\n".join(test_rows[1:]) + "\n")
    result = run("split", "--project", tmp_path, "--verify")
    assert result.exit_code == 1 and "SEAL BROKEN" in result.stdout


def test_check_on_sealed_test_never_prints_its_content(tmp_path):
    rows = clean_examples(120)
    for r in rows:
        r["messages"][1]["content"] += " ZEBRAQUARTZ"
    _project(tmp_path, rows)
    run("split", "--project", tmp_path)
    result = run("check", tmp_path / "data" / "test.jsonl", "--no-tokens")
    assert "ZEBRAQUARTZ" not in result.stdout
    result = run("check", tmp_path / "data" / "test.jsonl", "--json", "--no-tokens")
    assert "ZEBRAQUARTZ" not in result.stdout


def test_split_builds_missing_data(tmp_path):
    (tmp_path / "make.py").write_text(
        "import json\nopen('data.jsonl','w').write(''.join(json.dumps({'prompt': f'q{i} '*3, 'completion': f'a{i}'})+'\\n' for i in range(50)))\n")
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer the question briefly.'\nbuild: python make.py\n")
    result = run("split", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    assert "built" in result.stderr and (tmp_path / "data" / "train.jsonl").exists()


def test_split_without_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("split")
    assert result.exit_code == 2 and "no input file and no project" in result.stderr


def test_fix_cli(tmp_path):
    rows = clean_examples(40)
    rows.append(rows[0])
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    result = run("fix", src, "-o", tmp_path / "clean.jsonl", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["dropped"] == 1
    result = run("fix", src, "-o", src)
    assert result.exit_code == 2 and "never writes over its input" in result.stderr


def test_convert_cli_names_unconvertible_lines(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ])
    result = run("convert", src, "-o", tmp_path / "o.jsonl", "--to", "instruction")
    assert result.exit_code == 1 and "line 2: not converted" in result.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1


def test_sample_cli_and_sealed_refusal(tmp_path):
    _project(tmp_path, clean_examples(120))
    run("split", "--project", tmp_path)
    result = run("sample", tmp_path / "data" / "train.jsonl", "--diverse", "5", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["lines"]) == 5
    result = run("sample", tmp_path / "data" / "test.jsonl")
    assert result.exit_code == 2 and "sealed test set" in result.stderr


def test_init_cli(tmp_path):
    result = run("init", tmp_path / "p", "--json")
    assert result.exit_code == 0 and (tmp_path / "p" / "tunesmith.yaml").exists()
    result = run("init", tmp_path / "p")
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert 'base_model: "builtin:smollm2-135m-instruct"' in (tmp_path / "p" / "tunesmith.yaml").read_text()


#: the flags that set a tunesmith.yaml setting, and the setting
MIRRORED = {
    "init": {"--task": "task", "--base-model": "base_model"},
    "train": {"--method": "train.method", "--rank": "train.rank", "--alpha": "train.alpha", "--layers": "train.layers",
              "--learning-rate": "train.learning_rate", "--epochs": "train.epochs", "--batch-size": "train.batch_size",
              "--effective-batch": "train.effective_batch", "--max-length": "max_length",
              "--eval-every": "train.eval_every", "--patience": "train.patience", "--converge": "train.converge",
              "--precision": "train.precision", "--time-budget": "train.time_budget", "--seed": "train.seed",
              "--model": "hosted.model", "--suffix": "hosted.suffix",
              "--learning-rate-multiplier": "hosted.learning_rate_multiplier"},
    "generate": {"--teacher-model": "generate.teacher_model", "--base-url": "generate.base_url", "--n": "generate.n",
                 "--output": "generate.output", "--concurrency": "generate.concurrency", "--timeout": "generate.timeout"},
    "cost": {"--teacher-model": "generate.teacher_model", "--n": "generate.n"},
    "eval": {"--max-new-tokens": "eval.max_new_tokens", "--batch-size": "eval.batch_size"},
    "baseline": {"--max-new-tokens": "eval.max_new_tokens", "--few-shot": "baseline.few_shot"},
    "run": {"--time-budget": "train.time_budget"},
    "advise": {"--task-kind": "task_kind"},
    "check": {"--task-kind": "task_kind", "--max-length": "max_length"},
}


@pytest.mark.parametrize("command", sorted(MIRRORED))
def test_options_that_set_a_setting_take_their_help_from_its_field(command):
    import typer

    from tunesmith.settings_docs import help_text

    params = {opt: p for p in typer.main.get_command(app).commands[command].params for opt in p.opts}
    for flag, path in MIRRORED[command].items():
        expected = help_text(path)  # after a condition ("With --backend openai: the ..."), in lower case
        assert params[flag].help in (expected, f"With --backend openai: {expected[0].lower()}{expected[1:]}"), flag


#: options whose accepted values are the field's own: (command, flag) -> setting
BOUNDED = {("generate", "--n"): "generate.n", ("generate", "--concurrency"): "generate.concurrency",
           ("cost", "--n"): "generate.n", ("baseline", "--few-shot"): "baseline.few_shot",
           ("eval", "--max-new-tokens"): "eval.max_new_tokens", ("eval", "--batch-size"): "eval.batch_size",
           ("baseline", "--max-new-tokens"): "eval.max_new_tokens", ("check", "--max-length"): "max_length"}


@pytest.mark.parametrize(("command", "flag"), sorted(BOUNDED))
def test_option_bounds_are_the_fields(command, flag):
    import typer

    from tunesmith.settings_docs import setting

    params = {opt: p for p in typer.main.get_command(app).commands[command].params for opt in p.opts}
    s = setting(BOUNDED[command, flag])
    assert (params[flag].min, params[flag].max) == (s.limit("ge"), s.limit("le"))



def test_schema_cli_prints_the_schema_and_writes_it(tmp_path):
    from tunesmith.settings_docs import project_schema

    result = run("schema")
    assert result.exit_code == 0 and json.loads(result.stdout) == project_schema()
    out = tmp_path / "tunesmith.schema.json"
    result = run("schema", "-o", out, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"schema_file": str(out)}
    assert json.loads(out.read_text()) == project_schema()
    result = run("schema", "--output", out)
    assert result.exit_code == 0 and f"# yaml-language-server: $schema={out}" in result.stdout
    result = run("schema", "-o", "-")
    assert result.exit_code == 0 and json.loads(result.stdout) == project_schema()


def test_models_resolve_cli(tiny_model_dir, tmp_path):
    result = run("models", "resolve", tiny_model_dir, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["kind"] == "directory"
    result = run("models", "resolve", "builtin:nope")
    assert result.exit_code == 2 and "smollm2-135m-instruct" in result.stderr


def test_build_cli(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer the question briefly.'\n")
    result = run("build", tmp_path)
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_check_skips_token_stats_when_project_model_is_unavailable(tmp_path):
    _project(tmp_path, clean_examples(60), extra="base_model: builtin:not-a-model\n")
    result = run("check", tmp_path / "data.jsonl", "--json")
    assert result.exit_code == 0
    assert "token statistics skipped" in result.stderr
    assert "not-a-model" in json.loads(result.stdout)["stats"]["tokens_skipped"]
    # asked for explicitly by flag: an error
    result = run("check", tmp_path / "data.jsonl", "--model", "builtin:not-a-model")
    assert result.exit_code == 2 and "hint:" in result.stderr


def test_json_commands_report_failures_as_json_on_stdout(tmp_path):
    result = run("check", tmp_path / "missing.jsonl", "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "DataError" and "missing.jsonl" in error["message"] and error["hint"]
    assert error["exit_code"] == 2
    result = run("train", "-p", tmp_path, "--dry-run", "--json")
    last = json.loads(result.stdout.splitlines()[-1])
    assert result.exit_code == 2 and last["event"] == "error" and last["error"]["type"] == "ProjectError"


def test_check_prints_bracketed_data_as_text(tmp_path):
    # "[/INST]" in a system prompt crashed the report (rich markup); "[bold]" vanished from it
    rows = [{"messages": [{"role": "system", "content": "[INST] Use [bold]labels[/bold] only [/INST]"},
                          {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "{}"}]}
            for i in range(3)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    result = run("check", tmp_path / "d.jsonl", "--no-tokens")
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert "'[INST] Use [bold]labels[/bold] only [/INST]'" in result.stdout
