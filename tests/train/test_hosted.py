"""Hosted fine-tuning against a real HTTP fake of OpenAI's files and fine_tuning.jobs APIs on 127.0.0.1,
driven by the official openai client through OPENAI_BASE_URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import write_jsonl
from fixtures.fake_finetune import FakeFineTuning
from tunesmith.cli import app
from tunesmith.errors import DataError, UsageError
from tunesmith.project import load_project
from tunesmith.train.hosted.api import Stopped, train_hosted
from tunesmith.train.hosted.job import HostedError
from tunesmith.train.hosted.plan import plan_hosted

runner = CliRunner()
MODEL = "gpt-4o-mini-2024-07-18"
#: words that are one cl100k_base token each (checked below), so every row's tokens can be counted by hand
WORDS = ("apple river stone cloud green happy table music light water paper house window dog silver "
         "orange winter summer market bridge forest castle doctor letter mirror planet rocket school street "
         "cat ticket travel turtle sun wallet yellow hat anchor cup key").split()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    rows = [{"messages": [{"role": "user", "content": WORDS[i]}, {"role": "assistant", "content": WORDS[(i + 7) % 40]}]}
            for i in range(40)]
    write_jsonl(root / "data.jsonl", rows)
    (root / "tunesmith.yaml").write_text(
        "task: 'Answer every word with its partner word.'\noutput:\n  regex: '^[a-z]+$'\n"
        "hosted:\n  poll_seconds: 0.01\n  validation_fraction: 0.1\n", encoding="utf-8")
    from tunesmith.data.split import split_file

    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.15)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return root


def _train_rows(project: Path) -> int:
    return sum(1 for _ in (project / "data" / "train.jsonl").open())


# --- the plan: the provider's rules and the money, before any upload -------------------------------------


def test_the_bill_matches_a_hand_computed_example(project: Path) -> None:
    from tunesmith.train.hosted.tokens import counter_for

    counter = counter_for(MODEL)
    assert all(len(counter.encoding.encode(w)) == 1 for w in WORDS + ["user", "assistant"])
    plan = plan_hosted(load_project(project), {"model": MODEL})
    n = _train_rows(project)
    n_valid = round(0.1 * n)
    assert (plan.train_examples, plan.validation_examples) == (n - n_valid, n_valid)
    # per row: 3 (reply priming) + 2 messages x (3 + 1 role + 1 word) = 13 tokens
    assert plan.train_tokens == 13 * (n - n_valid)
    # OpenAI's auto epochs, which the plan uses: 3, unless examples x 3 falls under 100 passes
    epochs = max(3, -(-100 // (n - n_valid)))
    assert plan.hyperparameters["n_epochs"] == {"value": epochs, "source": "data", "why": plan.hyperparameters["n_epochs"]["why"]}
    assert plan.billed_tokens == 13 * (n - n_valid) * epochs
    assert plan.cost_usd == pytest.approx(13 * (n - n_valid) * epochs * 8.00 / 1e6)
    assert plan.hyperparameters["batch_size"]["value"] == "auto"
    assert "$8.00/1M" in plan.cost_line() and "2026-06" in plan.cost_line()


def test_flags_and_the_project_price_override_the_plan_and_the_table(project: Path) -> None:
    text = (project / "tunesmith.yaml").read_text() + "  price: {training: 2.5}\n  n_epochs: 2\n"
    (project / "tunesmith.yaml").write_text(text)
    plan = plan_hosted(load_project(project), {"model": MODEL, "batch_size": 4, "learning_rate_multiplier": 1.8})
    assert plan.api_hyperparameters() == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.8}
    assert plan.hyperparameters["n_epochs"]["source"] == "tunesmith.yaml"
    assert plan.cost_usd == pytest.approx(plan.train_tokens * 2 * 2.5 / 1e6)
    assert plan.price.source == "tunesmith.yaml hosted.price"


def test_unknown_models_and_over_limit_examples_are_refused_by_name(project: Path) -> None:
    with pytest.raises(UsageError) as err:
        plan_hosted(load_project(project), {"model": "gpt-99-mega"})
    assert "not a model OpenAI fine-tunes" in err.value.message and "gpt-4o-mini" in err.value.hint
    rows = [json.loads(line) for line in (project / "data" / "train.jsonl").open()]
    rows[3]["messages"][0]["content"] = "word " * 17_000
    (project / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        plan_hosted(load_project(project), {"model": "gpt-3.5-turbo-0125"})
    assert "train.jsonl:4" in err.value.details[0] and "16,385" in err.value.details[0]


def test_the_same_guards_as_local_training(project: Path) -> None:
    from tunesmith.errors import SealError

    test_file = project / "data" / "test.jsonl"
    lines = test_file.read_text().splitlines()
    first = json.loads(lines[0])
    first["messages"][1]["content"] = "changed"
    test_file.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(SealError) as err:
        plan_hosted(load_project(project), {"model": MODEL})
    assert "sealed test set changed" in err.value.message
    train = project / "data" / "train.jsonl"
    train.write_text(train.read_text() + "{not json\n")
    test_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        plan_hosted(load_project(project), {"model": MODEL})
    assert "`check` found" in err.value.message


def test_no_key_for_openai_is_refused_before_any_upload(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out = runner.invoke(app, ["train", "-p", str(project), "--backend", "openai", "--model", MODEL, "--yes"])
    assert out.exit_code == 2 and "OPENAI_API_KEY is not set" in out.stderr and "nothing was uploaded" in out.stderr


def test_without_yes_and_without_a_terminal_nothing_starts(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        out = runner.invoke(app, ["train", "-p", str(project), "--backend", "openai", "--model", MODEL])
        assert out.exit_code == 2 and "--yes" in out.stderr and "cost:" in out.stdout
        assert not server.files and not server.jobs


# --- the job ------------------------------------------------------------------------------------------


def test_a_job_runs_to_its_model_and_eval_uses_it_with_no_id_typed(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning(auto_seconds=0.0, chat_handler=lambda req: WORDS[0]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        out = runner.invoke(app, ["train", "-p", str(project), "--backend", "openai", "--model", MODEL,
                                  "--suffix", "words", "--yes", "--json"])
        assert out.exit_code == 0, out.output
        events = [json.loads(line) for line in out.stdout.splitlines()]
        assert events[0]["event"] == "plan" and events[-1]["event"] == "done"
        assert "succeeded" in [e.get("status") for e in events]
        run_id = events[-1]["run_id"]
        record = load_project(project).registry().get(run_id)
        assert record.status == "completed" and record.method == "hosted-openai" and record.base_model == MODEL
        job_id = next(iter(server.jobs))
        state = json.loads((Path(record.path) / "hosted.json").read_text())
        assert state["job_id"] == job_id and state["fine_tuned_model"].startswith(f"ft:{MODEL}:org:words:")
        uploaded = server.files[state["files"]["train"]]["content"].decode().splitlines()
        assert len(uploaded) == record.plan["derived"]["train_examples"]
        assert all(set(json.loads(line)) == {"messages"} for line in uploaded)  # tunesmith's own keys never leave
        assert record.metrics["trained_tokens"] > 0 and record.metrics["fine_tuned_model"] == state["fine_tuned_model"]
        steps = [json.loads(line) for line in (Path(record.path) / "steps.jsonl").read_text().splitlines()]
        assert any(s["event"] == "step" for s in steps) and any(s["event"] == "eval" for s in steps)
        assert list(Path(record.path).glob("result-*.csv"))
        shown = runner.invoke(app, ["runs", "show", run_id, "-p", str(project)])
        assert state["fine_tuned_model"] in shown.stdout and "hosted-openai" in shown.stdout

        ev = runner.invoke(app, ["eval", run_id, "-p", str(project), "--json"])
        assert ev.exit_code == 0, ev.output
        chat_models = {r["json"]["model"] for r in server.requests if r["path"].endswith("/chat/completions")}
        assert chat_models == {state["fine_tuned_model"], MODEL}  # the tuned model, compared with its hosted base


def test_kill_9_then_resume_reattaches_and_records_the_model(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning() as server:  # no automatic steps: the job waits until the test moves it
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test"}
        proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "train", "-p", str(project), "--backend", "openai",
                                 "--model", MODEL, "--yes"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not server.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # polling
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        record = load_project(project).registry().list(None)[0]
        state = json.loads((Path(record.path) / "hosted.json").read_text())
        job_id = next(iter(server.jobs))
        assert state["job_id"] == job_id  # known the moment the job existed
        server.finish(job_id)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        out = runner.invoke(app, ["train", "-p", str(project), "--resume", record.id])
        assert out.exit_code == 0, out.output
    done = load_project(project).registry().get(record.id)
    assert done.status == "completed" and done.metrics["fine_tuned_model"].startswith(f"ft:{MODEL}")
    assert len(server.jobs) == 1 and len([f for f in server.files.values() if f["purpose"] == "fine-tune"]) == 2


def test_a_failed_job_shows_the_providers_error_verbatim(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)

        def fail_it(event: dict) -> None:
            if event.get("status") == "validating_files":
                server.fail_job(event["job_id"], "invalid_training_file", "Line 7: the assistant says nothing useful")
            server.advance()

        with pytest.raises(HostedError) as err:
            train_hosted(project, {"model": MODEL}, on_event=fail_it)
    assert "invalid_training_file: Line 7: the assistant says nothing useful" in err.value.message
    record = load_project(project).registry().list(None)[0]
    assert record.status == "failed" and "Line 7" in record.error


def test_a_network_drop_while_polling_keeps_the_job_for_a_resume(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)

        def drop(event: dict) -> None:
            if event.get("status") == "validating_files":
                server.drop_next(12)  # more than the retries of the next poll

        from tunesmith.inference import openai_client

        monkeypatch.setattr(openai_client.RetryPolicy, "delay", lambda self, attempt: 0.01)
        with pytest.raises(HostedError) as err:
            train_hosted(project, {"model": MODEL}, on_event=drop)
        assert "lost contact" in err.value.message and "--resume" in err.value.hint
        record = load_project(project).registry().list(None)[0]
        assert record.status == "interrupted"
        server._faults.clear()  # the network is back
        server.finish()
        outcome = train_hosted(project, {}, resume=record.id)
    assert outcome.metrics["fine_tuned_model"]


@pytest.mark.parametrize("choice", ["cancel", "detach"])
def test_ctrl_c_asks_whether_to_cancel_the_job_or_only_detach(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                             choice: str) -> None:
    with FakeFineTuning() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)

        def interrupt(event: dict) -> None:
            if event.get("status") == "validating_files":
                raise KeyboardInterrupt

        asked: list[str] = []
        with pytest.raises(Stopped) as err:
            train_hosted(project, {"model": MODEL}, on_event=interrupt,
                         on_interrupt=lambda job_id: asked.append(job_id) or choice)
        job_id = next(iter(server.jobs))
        assert asked == [job_id]
        record = load_project(project).registry().list(None)[0]
        if choice == "cancel":
            assert server.job(job_id)["status"] == "cancelled" and record.status == "failed"
            assert "cancelled" in err.value.message
        else:
            assert server.job(job_id)["status"] != "cancelled" and record.status == "interrupted"
            assert "--resume" in err.value.hint and "keeps running" in err.value.message


def test_rate_limits_and_server_errors_are_waited_out(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning(auto_seconds=0.0) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        server.rate_limit_next(2, retry_after="0.05")
        server.error_next(1, status=503)
        outcome = train_hosted(project, {"model": MODEL})
    assert outcome.metrics["fine_tuned_model"]
    assert [r["status"] for r in server.requests[:3]] == [429, 429, 503]


def test_a_refused_key_stops_with_the_fix_and_a_failed_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning(require_key="sk-right") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        out = runner.invoke(app, ["train", "-p", str(project), "--backend", "openai", "--model", MODEL, "--yes"])
        assert len(server.requests) == 1  # refused once, never retried
    assert out.exit_code == 2 and "refused the API key" in out.stderr and "OPENAI_API_KEY" in out.stderr
    record = load_project(project).registry().list(None)[0]
    assert record.status == "failed" and "401" in record.error


def test_a_create_whose_answer_is_lost_reuses_the_job_instead_of_paying_twice(project: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.inference.openai_client import RequestFailed
    from tunesmith.train.hosted.openai_backend import OpenAIFineTuning

    real_create = OpenAIFineTuning.create_job

    def create_then_lose_the_answer(self, **kwargs):
        real_create(self, **kwargs)
        raise RequestFailed("the connection broke", kind="connection broken")

    monkeypatch.setattr(OpenAIFineTuning, "create_job", create_then_lose_the_answer)
    with FakeFineTuning(auto_seconds=0.0) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        outcome = train_hosted(project, {"model": MODEL})
        assert len(server.jobs) == 1 and outcome.metrics["fine_tuned_model"]
        creates = [r for r in server.requests if r["method"] == "POST" and r["path"].endswith("/fine_tuning/jobs")]
        assert len(creates) == 1  # never retried


def test_a_refused_job_is_a_failed_run_not_lost_contact(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        server.error_next(1, status=400, route=("POST", "/v1/fine_tuning/jobs"),
                          body={"error": {"message": "batch_size must be at most 256", "param": "batch_size",
                                          "type": "invalid_request_error"}})
        with pytest.raises(HostedError) as err:
            train_hosted(project, {"model": MODEL, "batch_size": 999})
    assert "refused the job" in err.value.message and "batch_size must be at most 256" in err.value.message
    assert "lost contact" not in err.value.message
    assert load_project(project).registry().list(None)[0].status == "failed"


def test_a_cancel_that_fails_is_said_and_the_run_stays_resumable(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)

        def interrupt(event: dict) -> None:
            if event.get("status") == "validating_files":
                server.error_next(20, status=503, route=("POST", "/v1/fine_tuning/jobs/{id}/cancel"))
                raise KeyboardInterrupt

        from tunesmith.inference import openai_client

        monkeypatch.setattr(openai_client.RetryPolicy, "delay", lambda self, attempt: 0.01)
        with pytest.raises(Stopped) as err:
            train_hosted(project, {"model": MODEL}, on_event=interrupt, on_interrupt=lambda job_id: "cancel")
    assert "could not be cancelled" in err.value.message and "--resume" in err.value.hint
    assert load_project(project).registry().list(None)[0].status == "interrupted"


def test_loss_points_written_before_a_kill_are_not_written_twice(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFineTuning(auto_seconds=0.0) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        outcome = train_hosted(project, {"model": MODEL})
        steps_file = outcome.run_dir / "steps.jsonl"
        before = steps_file.read_text()
        state = json.loads((outcome.run_dir / "hosted.json").read_text())
        state.pop("last_event")  # as if killed after the losses were appended, before last_event was saved
        state["status"] = "running"
        (outcome.run_dir / "hosted.json").write_text(json.dumps(state))
        load_project(project).registry().set_status(outcome.run_id, "interrupted")
        train_hosted(project, {}, resume=outcome.run_id)
    assert steps_file.read_text() == before
