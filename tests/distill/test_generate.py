"""`tunesmith generate` against a real HTTP teacher on 127.0.0.1 (OpenAI wire format, official client)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.fake_openai import FakeOpenAI, Reply
from fixtures.fake_teacher import SCHEMA, SYSTEM, FakeTeacher, answer_text, label, write_project
from tunesmith.cli import app
from tunesmith.distill.generate import generate, options_for
from tunesmith.distill.teacher import TeacherError
from tunesmith.errors import DataError, UsageError
from tunesmith.project import load_project

runner = CliRunner()


def _run(root: Path, url: str, **flags):
    project = load_project(root)
    opts = options_for(project, {"teacher_model": "teacher-x", "base_url": url, **flags})
    opts.max_retries = flags.pop("max_retries", 2)
    opts.backoff = 0.05
    return generate(project, opts)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _inputs_of(path: Path) -> set[str]:
    return {m["content"] for r in _rows(path) for m in r["messages"] if m["role"] == "user"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj")


# --- the happy path --------------------------------------------------------------------------------


def test_generates_n_valid_rows_with_provenance_and_checks_clean(project: Path) -> None:
    teacher = FakeTeacher()
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, n=30)
    rows = _rows(project / "generated.jsonl")
    assert result.rows == len(rows) == 30
    from jsonschema import validate

    for r in rows:
        system, user, answer = r["messages"]
        assert system == {"role": "system", "content": SYSTEM}  # the project's prompt, not the teacher's longer one
        validate(json.loads(answer["content"]), SCHEMA)
        assert json.loads(answer["content"]) == label(user["content"])
        prov = r["provenance"]
        assert prov["source"] == "teacher" and prov["teacher_model"] == "teacher-x"
        assert prov["base_url_host"].startswith("127.0.0.1:") and len(prov["request_sha256"]) == 64
        assert prov["created"].endswith("Z") and prov["generation"] == result.generation
        assert r["review"] == {"status": "unreviewed"}
    # every answer request carried the schema as a JSON Schema response_format, and the plan came first, alone
    answers = [b for b in teacher.bodies if teacher.kind_of(b) == "answer"]
    assert all(b["response_format"]["type"] == "json_schema" and b["response_format"]["json_schema"]["schema"] == SCHEMA
               for b in answers)
    assert teacher.kind_of(teacher.bodies[0]) == "plan"
    # check and split take the file like any data
    out = runner.invoke(app, ["check", str(project / "generated.jsonl"), "-p", str(project), "--no-tokens", "--json"])
    assert out.exit_code == 0, out.output
    assert not [f for f in json.loads(out.stdout)["findings"] if f["severity"] == "error"]
    assert result.tally.sent.replies == len(teacher.bodies) and result.tally.sent.prompt_tokens > 0


def test_inputs_come_from_a_diversity_plan_of_kinds_and_lengths_and_never_show_the_test_set(project: Path) -> None:
    teacher = FakeTeacher()
    with FakeOpenAI(teacher) as server:
        _run(project, server.base_url, n=60)
    input_requests = [b["messages"][-1]["content"] for b in teacher.bodies if teacher.kind_of(b) == "inputs"]
    assert len(input_requests) >= 60 / 8
    joined = "\n".join(input_requests)
    assert "Topic, scenario or persona: topic" in joined  # the plan's topics are used
    for kind in ("edge cases", "error paths", "typical"):
        assert kind in joined
    for length in ("shorter than the examples", "longer than the examples"):
        assert length in joined
    test_inputs = [json.loads(line)["messages"][1]["content"] for line in (project / "data/test.jsonl").open()]
    train_inputs = [json.loads(line)["messages"][1]["content"] for line in (project / "data/train.jsonl").open()]
    everything_sent = json.dumps(teacher.bodies)
    assert not any(t in everything_sent for t in test_inputs)  # seeds come from train only
    assert any(t in everything_sent for t in train_inputs)


def test_inputs_that_copy_or_nearly_copy_test_or_train_rows_are_dropped(project: Path) -> None:
    test_inputs = [json.loads(line)["messages"][1]["content"] for line in (project / "data/test.jsonl").open()]
    train_inputs = [json.loads(line)["messages"][1]["content"] for line in (project / "data/train.jsonl").open()]
    leaks = [test_inputs[0], test_inputs[1] + "!", train_inputs[0].upper(), "same new text here please", "same new text here please"]

    def misbehave(body, kind, count):
        if kind == "inputs" and count == 0:
            return Reply(content=json.dumps({"inputs": leaks + ["A genuinely new battery review that broke 12"]}))
        return None

    with FakeOpenAI(FakeTeacher(misbehave)) as server:
        result = _run(project, server.base_url, n=20)
    kept = _inputs_of(project / "generated.jsonl")
    assert not set(test_inputs) & kept and test_inputs[1] + "!" not in kept
    assert train_inputs[0].upper() not in kept
    assert sum(1 for r in _rows(project / "generated.jsonl") if r["messages"][1]["content"] == leaks[3]) == 1
    assert result.inputs["duplicate_of_test"] == 2
    assert result.inputs["duplicate_of_train"] == 1
    assert result.inputs["duplicate_of_each_other"] >= 1
    assert result.rows == 20


def test_user_inputs_are_only_labelled(project: Path, tmp_path: Path) -> None:
    test_input = json.loads((project / "data/test.jsonl").open().readline())["messages"][1]["content"]
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("The battery died on day two, returned it 1\n\n"
                      '"A quoted JSON string review: great sound 2"\n'
                      + json.dumps({"messages": [{"role": "user", "content": "Fan noise is fine 3"}]}) + "\n"
                      + test_input + "\n", encoding="utf-8")
    teacher = FakeTeacher()
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, inputs_file=str(inputs))
    assert {teacher.kind_of(b) for b in teacher.bodies} == {"answer"}  # no plan, no new inputs
    users = [r["messages"][1]["content"] for r in _rows(project / "generated.jsonl")]
    assert users == ["The battery died on day two, returned it 1", "A quoted JSON string review: great sound 2",
                     "Fan noise is fine 3"]
    assert result.inputs["duplicate_of_test"] == 1
    assert [r["provenance"]["input"] for r in _rows(project / "generated.jsonl")][0] == "inputs.txt:1"


def test_bad_input_lines_are_all_reported_at_once(project: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("fine text\n" + json.dumps({"foo": 1}) + "\n"
                      + json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                      + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        _run(project, "http://127.0.0.1:9/v1", inputs_file=str(inputs))
    assert "2 line(s)" in err.value.message
    assert any(":2:" in d and "foo" in d for d in err.value.details)
    assert any(":3:" in d and "ends with an assistant turn" in d for d in err.value.details)


# --- the contract --------------------------------------------------------------------------------------


def test_an_invalid_answer_is_retried_with_the_problem_shown_then_kept(project: Path) -> None:
    def misbehave(body, kind, count):
        if kind == "answer" and count == 0:
            return Reply(content='{"sentiment": "ecstatic", "words": 3}')
        return None

    teacher = FakeTeacher(misbehave)
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, n=10)
    fixes = [b for b in teacher.bodies if teacher.kind_of(b) == "fix"]
    assert len(fixes) == 1
    assert fixes[0]["messages"][-2] == {"role": "assistant", "content": '{"sentiment": "ecstatic", "words": 3}'}
    assert "breaks the schema at $.sentiment" in fixes[0]["messages"][-1]["content"]
    assert result.rows == 10 and result.answers["retried_for_contract"] == 1


def test_an_answer_that_never_meets_the_contract_is_dropped_and_logged(project: Path) -> None:
    def misbehave(body, kind, count):
        if kind in ("answer", "fix") and "flaky" in FakeTeacher.question(body):
            return Reply(content="I think it is positive.")
        return None

    inputs = project / "in.txt"
    inputs.write_text("flaky review one\nsolid review two 2\n", encoding="utf-8")
    teacher = FakeTeacher(misbehave)
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, inputs_file=str(inputs))
    assert result.rows == 1 and result.answers["dropped"] == 1
    assert sum(FakeTeacher.question(b) == "flaky review one" for b in teacher.bodies) == 3  # max_attempts
    log = [json.loads(line) for line in result.log.read_text().splitlines()]
    dropped = [e for e in log if e["event"] == "dropped"]
    assert len(dropped) == 1 and "is not JSON" in dropped[0]["reason"] and "flaky" in dropped[0]["prompt"]
    first_log = result.log.read_bytes()
    with FakeOpenAI(teacher) as server:  # another port: other requests, other threads, the same log order
        _run(project, server.base_url, inputs_file=str(inputs), concurrency=2)
    assert [json.loads(x)["event"] for x in result.log.read_text().splitlines()] == [e["event"] for e in log]
    assert len(first_log) > 0


def test_json_answers_take_the_seed_answers_style_and_lose_code_fences(project: Path) -> None:
    def misbehave(body, kind, count):
        if kind == "answer":
            value = label(FakeTeacher.question(body))
            return Reply(content="```json\n" + json.dumps(value, indent=2) + "\n```")
        return None

    with FakeOpenAI(FakeTeacher(misbehave)) as server:
        result = _run(project, server.base_url, n=5)
    for r in _rows(project / "generated.jsonl"):
        assert r["messages"][-1]["content"] == answer_text(r["messages"][1]["content"])  # compact, like the seeds
    assert result.answers["code_fences_removed"] == 5


def test_an_endpoint_without_json_schema_mode_is_asked_again_without_it_and_remembered(project: Path) -> None:
    def misbehave(body, kind, count):
        if kind == "answer" and "response_format" in body:
            return Reply(status=400, body={"error": {"message": "response_format is not supported by this server",
                                                     "type": "invalid_request_error"}})
        return None

    teacher = FakeTeacher(misbehave)
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, n=12)
        assert result.rows == 12
        formats = [b.get("response_format", {}).get("type") for b in teacher.bodies if teacher.kind_of(b) == "answer"]
        assert formats[:2] == ["json_schema", "json_object"] and formats[-1] is None
        assert formats.count("json_schema") == 1  # the first answer goes alone and teaches the rest
        before = len(teacher.bodies)
        _run(project, server.base_url, n=12)
        assert len(teacher.bodies) == before  # the re-run starts adapted: everything from the cache


def test_newer_models_get_max_completion_tokens(project: Path) -> None:
    def misbehave(body, kind, count):
        if "max_tokens" in body:
            return Reply(status=400, body={"error": {"message": "Unsupported parameter: 'max_tokens' is not supported "
                                                     "with this model. Use 'max_completion_tokens' instead."}})
        return None

    teacher = FakeTeacher(misbehave)
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, n=8)
    assert result.rows == 8
    assert all("max_completion_tokens" in b for b in teacher.bodies[-5:])


# --- the endpoint misbehaving ------------------------------------------------------------------------------


def test_rate_limits_and_server_errors_are_retried_with_retry_after(project: Path) -> None:
    seen: dict[str, list[float]] = {}

    def misbehave(body, kind, count):
        if kind != "answer":
            return None
        q = FakeTeacher.question(body)
        seen.setdefault(q, []).append(time.monotonic())
        if count == 2:
            return Reply(status=429, headers={"Retry-After": "0.5"}, body={"error": {"message": "slow down"}})
        if count == 4:
            return Reply(status=503, body={"error": {"message": "overloaded"}})
        return None

    with FakeOpenAI(FakeTeacher(misbehave)) as server:
        result = _run(project, server.base_url, n=8, concurrency=1)
    assert result.rows == 8
    waited = [t[1] - t[0] for t in seen.values() if len(t) == 2]
    assert len(waited) == 2 and max(waited) >= 0.45
    problems = result.tally.problems
    assert problems["retried after HTTP 429"] == 1 and problems["retried after HTTP 503"] == 1


@pytest.mark.parametrize("status,words", [(401, "refused the API key"), (403, "refused access"),
                                          (404, "does not know the model")])
def test_refusals_stop_everything_at_once(project: Path, status: int, words: str) -> None:
    teacher = FakeTeacher(lambda body, kind, count: Reply(status=status, body={"error": {"message": "no"}}))
    with FakeOpenAI(teacher) as server:
        with pytest.raises(TeacherError) as err:
            _run(project, server.base_url, n=20)
    assert words in err.value.message and "--teacher-model" in err.value.hint
    assert len(teacher.bodies) == 1
    assert not (project / "generated.jsonl").exists()


def test_an_unreachable_teacher_is_named(project: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TeacherError) as err:
        _run(project, f"http://127.0.0.1:{port}/v1", n=5, max_retries=1)
    assert "cannot reach the teacher" in err.value.message and "--base-url" in err.value.hint


def test_a_misbehaving_teacher_is_counted_never_a_traceback(project: Path) -> None:
    """Non-JSON bodies, empty choices, truncated text, another model's name, hang-ups and a slow reply."""

    def misbehave(body, kind, count):
        if kind != "answer":
            return None
        return {1: Reply(raw=b"<html>502 Bad Gateway</html>"), 2: Reply(no_choices=True),
                3: Reply(content='{"sentiment": "pos', finish_reason="length"), 4: Reply(hangup=True),
                5: Reply(content=answer_text(FakeTeacher.question(body)), delay=3.0),
                6: Reply(content=answer_text(FakeTeacher.question(body)), model="other-model-7b")}.get(count)

    with FakeOpenAI(FakeTeacher(misbehave)) as server:
        out = runner.invoke(app, ["generate", "-p", str(project), "--teacher-model", "teacher-x", "--base-url",
                                  server.base_url, "--n", "10", "--concurrency", "1", "--timeout", "1", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["rows"] == 10
    problems = result["usage"]["problems"]
    assert problems["retried after unreadable reply"] == 2
    assert problems["retried after connection broken"] == 1 and problems["retried after timeout"] == 1
    assert result["answers"]["truncated"] == 1
    assert result["usage"]["answered_as_other_models"] == {"other-model-7b": 1}
    assert any("other-model-7b" in w for w in result["warnings"])


# --- cache, kill -9 and the output file ----------------------------------------------------------------------


def test_a_second_run_sends_nothing_and_writes_the_same_file(project: Path) -> None:
    teacher = FakeTeacher()
    with FakeOpenAI(teacher) as server:
        _run(project, server.base_url, n=25)
        first = (project / "generated.jsonl").read_bytes()
        before = len(teacher.bodies)
        again = _run(project, server.base_url, n=25)
    assert len(teacher.bodies) == before and again.tally.sent.replies == 0 and again.tally.cached.replies > 0
    assert (project / "generated.jsonl").read_bytes() == first


def _without_time(path: Path) -> list[dict]:
    rows = _rows(path)
    for r in rows:
        r["provenance"].pop("created")
    return rows


def test_kill_9_then_rerun_pays_for_nothing_twice_and_ends_with_the_same_file(tmp_path: Path) -> None:
    killed, clean = write_project(tmp_path / "killed"), write_project(tmp_path / "clean")
    bodies: list[str] = []

    def slow(body, kind, count):
        bodies.append(json.dumps(body, sort_keys=True))
        return None if kind != "answer" else Reply(content=answer_text(FakeTeacher.question(body)), delay=0.05)

    with FakeOpenAI(FakeTeacher(slow)) as server:
        cmd = [sys.executable, "-m", "tunesmith", "generate", "-p", str(killed), "--teacher-model", "teacher-x",
               "--base-url", server.base_url, "--n", "60", "--concurrency", "2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while sum('"That answer' not in b and "Write " not in b for b in bodies) < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (killed / "generated.jsonl").exists()  # nothing half-written
        first_run = list(bodies)
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        second_run = bodies[len(first_run):]
        clean_out = subprocess.run([*cmd[:5], str(clean), *cmd[6:]], capture_output=True, text=True)
        assert clean_out.returncode == 0, clean_out.stderr
    answered_first = [b for b in first_run if '"That answer' not in b and "Write " not in b]
    assert len(answered_first) >= 25  # the kill came mid-way through the answers
    repeated = set(first_run) & set(second_run)
    assert len(repeated) <= 2  # at most the requests in flight at the kill (concurrency 2)
    assert _without_time(killed / "generated.jsonl") == _without_time(clean / "generated.jsonl")


def test_output_never_overwrites_project_data(project: Path) -> None:
    for target in ("data.jsonl", "data/train.jsonl", "data/test.jsonl"):
        with pytest.raises(UsageError) as err:
            _run(project, "http://127.0.0.1:9/v1", n=5, output=str(project / target))
        assert "never writes over the project's data" in err.value.message


def test_rerun_keeps_review_decisions_and_refuses_to_lose_them(project: Path) -> None:
    with FakeOpenAI(FakeTeacher()) as server:
        _run(project, server.base_url, n=10)
        path = project / "generated.jsonl"
        rows = _rows(path)
        rows[2]["review"] = {"status": "edited", "original": rows[2]["messages"][-1]["content"]}
        rows[2]["messages"][-1]["content"] = '{"sentiment":"negative","words":1}'
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        result = _run(project, server.base_url, n=10)
        assert result.kept_reviews == 1
        assert _rows(path)[2]["review"]["status"] == "edited"
        assert _rows(path)[2]["messages"][-1]["content"] == '{"sentiment":"negative","words":1}'
        with pytest.raises(UsageError) as err:
            _run(project, server.base_url, n=2)  # fewer rows: the reviewed third row would vanish
        assert "1 reviewed row(s)" in err.value.message and "--force" in err.value.hint
        _run(project, server.base_url, n=2, force=True)
    assert len(_rows(path)) == 2


def test_generation_needs_the_test_set_sealed_first(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", split=False)
    with pytest.raises(DataError) as err:
        _run(root, "http://127.0.0.1:9/v1", n=5)
    assert "no training split" in err.value.message and "tunesmith split" in err.value.hint


# --- cost and the command line -----------------------------------------------------------------------------


def test_cost_uses_the_dated_table_or_the_projects_price(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p")
    with FakeOpenAI(FakeTeacher()) as server:
        project = load_project(root)
        opts = options_for(project, {"teacher_model": "gpt-4o-mini-2024-07-18", "base_url": server.base_url, "n": 5})
        result = generate(project, opts)
    t = result.tally
    assert t.to_dict()["cost_usd"] == pytest.approx((t.sent.prompt_tokens * 0.15 + t.sent.completion_tokens * 0.60) / 1e6, abs=1e-6)
    assert "2026-03" in t.price.source
    priced = write_project(tmp_path / "q", price={"input": 1.0, "output": 2.0})
    with FakeOpenAI(FakeTeacher()) as server:
        project = load_project(priced)
        result = generate(project, options_for(project, {"teacher_model": "local-model", "base_url": server.base_url, "n": 5}))
    t = result.tally
    assert t.cost == pytest.approx((t.sent.prompt_tokens + 2 * t.sent.completion_tokens) / 1e6)
    assert t.price.source == "tunesmith.yaml generate.price"


def test_cli_generate_json_and_its_usage_errors(project: Path) -> None:
    with FakeOpenAI(FakeTeacher()) as server:
        out = runner.invoke(app, ["generate", "-p", str(project), "--teacher-model", "teacher-x", "--base-url",
                                  server.base_url, "--n", "6", "-o", str(project / "more.jsonl"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["rows"] == 6 and data["output"].endswith("more.jsonl") and data["usage"]["requests_sent"] > 0
    out = runner.invoke(app, ["generate", "-p", str(project), "--n", "6"])
    assert out.exit_code == 2 and "no teacher model" in out.stderr and "--teacher-model" in out.stderr
    out = runner.invoke(app, ["generate", "-p", str(project), "--teacher-model", "m", "--n", "5", "--inputs", "x.txt"])
    assert out.exit_code == 2 and "--n and --inputs are exclusive" in out.stderr


def test_settings_come_from_the_project_file(tmp_path: Path) -> None:
    with FakeOpenAI(FakeTeacher()) as server:
        root = write_project(tmp_path / "p", teacher_model="yaml-teacher", base_url=server.base_url, n=7,
                             output="gen/out.jsonl")
        out = runner.invoke(app, ["generate", "-p", str(root), "--json"])
    assert out.exit_code == 0, out.output
    rows = _rows(root / "gen/out.jsonl")
    assert len(rows) == 7 and rows[0]["provenance"]["teacher_model"] == "yaml-teacher"


def test_openai_without_a_key_is_refused_before_any_request(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out = runner.invoke(app, ["generate", "-p", str(project), "--teacher-model", "gpt-4o-mini", "--n", "5"])
    assert out.exit_code == 2
    assert "OPENAI_API_KEY is not set" in out.stderr and "https://api.openai.com/v1" in out.stderr


def test_openai_base_url_from_the_environment_is_honoured(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOpenAI(FakeTeacher()) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        out = runner.invoke(app, ["generate", "-p", str(project), "--teacher-model", "env-teacher", "--n", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert _rows(project / "generated.jsonl")[0]["provenance"]["base_url_host"] == server.base_url.split("/")[2]


def test_a_teacher_whose_every_answer_breaks_the_contract_gives_the_reasons(project: Path) -> None:
    teacher = FakeTeacher(lambda body, kind, count: Reply(content="plain words") if kind in ("answer", "fix") else None)
    with FakeOpenAI(teacher) as server:
        with pytest.raises(TeacherError) as err:
            _run(project, server.base_url, n=3)
    assert "no usable example" in err.value.message and "generated.jsonl.log" in err.value.hint
    assert err.value.details and all("is not JSON" in d for d in err.value.details)
    assert not (project / "generated.jsonl").exists()
    assert len((project / "generated.jsonl.log").read_text().splitlines()) >= 3


def test_a_server_with_a_smaller_token_limit_gets_smaller_requests(project: Path) -> None:
    def misbehave(body, kind, count):
        if body.get("max_tokens", 0) > 1000:
            return Reply(status=400, body={"error": {"message": f"max_tokens {body['max_tokens']} is over this "
                                                     "server's limit of 1000", "param": "max_tokens"}})
        return None

    teacher = FakeTeacher(misbehave)
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, n=10)
    assert result.rows == 10
    assert max(b["max_tokens"] for b in teacher.bodies[-10:]) <= 1000
    assert result.tally.problems["endpoint refused a parameter (max_tokens_cap)"] >= 1


def test_a_prompt_too_long_for_the_context_gets_less_room_for_that_request_only(project: Path) -> None:
    def misbehave(body, kind, count):
        if kind == "answer" and "LONG" in FakeTeacher.question(body) and body["max_tokens"] > 700:
            return Reply(status=400, body={"error": {"message": (
                "This model's maximum context length is 1000 tokens. However, you requested 1324 tokens "
                f"(300 in the messages, {body['max_tokens']} in the completion). Please reduce the length."),
                "param": "messages"}})
        return None

    inputs = project / "in.txt"
    inputs.write_text("short one 1\nLONG review text 2\nshort two 3\n", encoding="utf-8")
    teacher = FakeTeacher(misbehave)
    with FakeOpenAI(teacher) as server:
        result = _run(project, server.base_url, inputs_file=str(inputs), concurrency=1)
        assert result.rows == 3
        sent = {FakeTeacher.question(b): b["max_tokens"] for b in teacher.bodies}
        assert sent["LONG review text 2"] == 1000 - 300 - 8  # what fits
        assert sent["short two 3"] == 1024  # the others keep their room: nothing global was learnt
        before = len(teacher.bodies)
        again = _run(project, server.base_url, inputs_file=str(inputs))
    assert len(teacher.bodies) == before and again.tally.sent.replies == 0  # the fit is remembered with the cache


def test_a_teacher_that_never_answers_stops_at_the_first_request(project: Path) -> None:
    teacher = FakeTeacher(lambda body, kind, count: Reply(content="{}", delay=2.0))
    with FakeOpenAI(teacher) as server:
        project_ = load_project(project)
        opts = options_for(project_, {"teacher_model": "t", "base_url": server.base_url, "n": 20, "timeout": 0.3})
        opts.max_retries, opts.backoff = 1, 0.01
        t0 = time.monotonic()
        with pytest.raises(TeacherError) as err:
            generate(project_, opts)
        assert time.monotonic() - t0 < 3
    assert "no answer from the teacher" in err.value.message and "--timeout" in err.value.hint
    assert len(teacher.bodies) == 2  # the first request and its one retry, nothing else


def test_output_is_never_the_inputs_file(project: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in.txt"
    inputs.write_text("a review 1\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        _run(project, "http://127.0.0.1:9/v1", inputs_file=str(inputs), output=str(inputs))
    assert "is the --inputs file" in err.value.message
    assert inputs.read_text() == "a review 1\n"


def test_a_fenced_free_text_answer_keeps_its_fence(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p")
    (root / "tunesmith.yaml").write_text(f"task: {json.dumps('Answer with a fenced code block showing the review.')}\n"
                                          "output:\n  regex: '```.*```'\n", encoding="utf-8")
    answer = "```text\nthe review\n```"
    with FakeOpenAI(FakeTeacher(lambda body, kind, count: Reply(content=answer) if kind == "answer" else None)) as server:
        result = _run(root, server.base_url, n=3)
    assert result.rows == 3 and result.answers["code_fences_removed"] == 0
    assert {r["messages"][-1]["content"] for r in _rows(root / "generated.jsonl")} == {answer}


def test_ctrl_c_exits_at_once_and_loses_nothing_answered(project: Path) -> None:
    def slow(body, kind, count):
        return Reply(content=answer_text(FakeTeacher.question(body)), delay=20) if kind == "answer" and count > 3 else None

    with FakeOpenAI(FakeTeacher(slow)) as server:
        proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "generate", "-p", str(project), "--teacher-model",
                                 "t", "--base-url", server.base_url, "--n", "30", "--concurrency", "4"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while server.in_flight < 4 and time.monotonic() < deadline:  # four answers hang in flight
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - t0
    assert proc.returncode == 130 and "interrupted" in err
    assert took < 5  # not the 20 s the replies in flight would take
    assert not (project / "generated.jsonl").exists()
