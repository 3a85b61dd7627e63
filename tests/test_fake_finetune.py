"""Tests of the fake fine-tuning server itself (tests/fixtures/fake_finetune.py), driven by the official
openai client the way the code under test drives OpenAI."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest

from fixtures.fake_finetune import RESULT_CSV_HEADER, FakeFineTuning, auto_hyperparameters, count_tokens

MODEL = "gpt-4o-mini-2024-07-18"


def example(i: int) -> dict:
    # 3 + 2 + 4 = 9 words
    return {"messages": [{"role": "system", "content": "you are terse"},
                         {"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer number {i} here"}]}


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def client_for(server: FakeFineTuning, **kw) -> openai.OpenAI:
    kw.setdefault("api_key", "sk-test")
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=server.base_url, **kw)


@pytest.fixture
def server():
    with FakeFineTuning(start_time=1_700_000_000) as s:
        yield s


@pytest.fixture
def client(server):
    return client_for(server)


def upload(client: openai.OpenAI, rows: list, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, jsonl(rows)), purpose="fine-tune").id


# --- files --------------------------------------------------------------------------------------


def test_upload_retrieve_content_delete(server, client):
    data = jsonl([example(i) for i in range(10)])
    f = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert f.id.startswith("file-") and f.object == "file" and f.status == "processed"
    assert (f.bytes, f.filename, f.purpose, f.created_at) == (len(data), "train.jsonl", "fine-tune", 1_700_000_000)
    assert server.files[f.id] == {"filename": "train.jsonl", "purpose": "fine-tune", "content": data}
    assert client.files.retrieve(f.id).model_dump() == f.model_dump()
    assert client.files.content(f.id).content == data
    assert [x.id for x in client.files.list(purpose="fine-tune")] == [f.id]
    deleted = client.files.delete(f.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (f.id, True, "file")
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        client.files.retrieve(f.id)
    assert server.calls[("POST", "/v1/files")] == 1
    assert server.calls[("GET", "/v1/files/{id}/content")] == 1
    assert server.calls[("DELETE", "/v1/files/{id}")] == 1


def test_upload_refuses_a_fine_tune_file_that_is_not_jsonl(client):
    with pytest.raises(openai.BadRequestError, match="Must be .jsonl"):
        client.files.create(file=("train.csv", b"a,b\n"), purpose="fine-tune")


# --- the whole life of a job ----------------------------------------------------------------------


def test_job_steps_to_succeeded_with_events_checkpoints_result_file_and_chat(server, client):
    rows = [example(i) for i in range(12)]
    training = upload(client, rows)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training)
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert (job.status, job.model, job.fine_tuned_model, job.trained_tokens, job.error) == (
        "validating_files", MODEL, None, None, None)
    assert job.hyperparameters.n_epochs == "auto" and job.hyperparameters.batch_size == "auto"
    assert job.organization_id == "org-fake" and job.result_files == [] and isinstance(job.seed, int)

    assert server.advance(job.id) == "queued"
    assert server.advance(job.id) == "running"
    running = client.fine_tuning.jobs.retrieve(job.id)
    auto = auto_hyperparameters(12)
    assert auto == {"n_epochs": 8, "batch_size": 1, "learning_rate_multiplier": 1.8}
    assert running.hyperparameters.model_dump() == auto
    assert running.method.supervised.hyperparameters.n_epochs == 8
    assert running.estimated_finish is not None and running.fine_tuned_model is None

    server.advance(job.id)  # one epoch: 12 steps, one checkpoint
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(12, 0, -1))  # newest first
    assert metrics[0].message.startswith("Step 12/96: training loss=")
    assert set(metrics[0].data) >= {"step", "train_loss", "train_mean_token_accuracy", "total_steps"}
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"

    assert server.finish(job.id) == "succeeded"
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model == f"ft:{MODEL}:org::{job.id[6:14]}"
    assert done.trained_tokens == 12 * 9 * 8 == sum(count_tokens(r) for r in rows) * 8
    assert done.finished_at == 1_700_000_000 + (3 + 8) * 60 and done.estimated_finish is None
    assert len(done.result_files) == 1

    result = client.files.retrieve(done.result_files[0])
    assert (result.purpose, result.filename) == ("fine-tune-results", "step_metrics.csv")
    csv = client.files.content(done.result_files[0]).text.splitlines()
    assert csv[0] == RESULT_CSV_HEADER == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert len(csv) == 1 + 96 and csv[1].startswith("1,") and csv[-1].startswith("96,")
    assert csv[-1].endswith(",,")  # no validation file: the valid columns are empty
    assert float(csv[-1].split(",")[1]) < float(csv[1].split(",")[1])  # the loss goes down

    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [96, 84, 72]  # the newest three, newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-96"
    assert checkpoints[0].object == "fine_tuning.job.checkpoint" and checkpoints[0].fine_tuning_job_id == job.id
    assert checkpoints[0].metrics.train_loss is not None and checkpoints[0].metrics.step == 96

    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert messages[0] == "The job has successfully completed"
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    assert f"Validating training file: {training}" in messages
    assert "Files validated, moving job to queued state" in messages and "Fine-tuning job started" in messages

    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == f"[{done.fine_tuned_model}] hi"
    assert client.chat.completions.create(model=checkpoints[0].fine_tuned_model_checkpoint,
                                          messages=[{"role": "user", "content": "x"}]).choices[0].message.content
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model=f"ft:{MODEL}:org::nosuchmd", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"


def test_suffix_method_hyperparameters_alias_and_validation_metrics(server, client):
    training = upload(client, [example(i) for i in range(10)])
    validation = upload(client, [example(i) for i in range(3)], "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini", training_file=training, validation_file=validation, suffix="my-bot", seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}})
    assert (job.model, job.seed, job.validation_file) == (MODEL, 7, validation)
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.learning_rate_multiplier == "auto"
    assert job.model_extra["user_provided_suffix"] == "my-bot"
    assert server.finish(job.id) == "succeeded"
    done = client.fine_tuning.jobs.retrieve(job.id)
    assert done.fine_tuned_model == f"ft:{MODEL}:org:my-bot:{job.id[6:14]}"
    assert done.hyperparameters.model_dump() == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.8}
    assert done.trained_tokens == 10 * 9 * 2  # validation examples are not billed
    csv = client.files.content(done.result_files[0]).text.splitlines()
    assert len(csv) == 1 + 2 * 3  # ceil(10 / 4) = 3 steps per epoch
    assert all(row.split(",")[3] and row.split(",")[4] for row in csv[1:])
    metric = next(e for e in client.fine_tuning.jobs.list_events(job.id) if e.type == "metrics")
    assert "valid_loss" in metric.data and "validation loss=" in metric.message
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data[0].metrics.full_valid_loss is not None


# --- failures -----------------------------------------------------------------------------------


def test_fail_job_reaches_the_client_verbatim(server, client):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, [example(i) for i in range(10)]))
    server.advance(job.id, steps=3)
    server.fail_job(job.id, "server_error", "The job failed due to an internal error.", param=None)
    assert server.advance(job.id) == "failed"
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert failed.error.model_dump() == {"code": "server_error", "message": "The job failed due to an internal error.",
                                         "param": None}
    assert failed.fine_tuned_model is None and failed.trained_tokens is None
    newest = client.fine_tuning.jobs.list_events(job.id, limit=1).data[0]
    assert (newest.level, newest.message) == ("error", "The job failed due to an internal error.")
    assert server.advance(job.id, steps=5) == "failed"  # final states stay put


def test_cancel(server, client):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, [example(i) for i in range(10)]))
    server.advance(job.id, steps=2)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert server.advance(job.id) == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.cancel("ftjob-nosuchjob")


@pytest.mark.parametrize("bad_line, problem", [
    ("not json", "Line 3: the line is not valid JSON"),
    (json.dumps({"prompt": "a", "completion": "b"}), 'Line 3, key "messages"'),
    (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
     "Line 3: Examples must have at least one assistant message"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
     "Line 3, message 1: Unrecognized role: 'robot'"),
    (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}),
     'Line 3, message 1: Missing key "content"'),
])
def test_an_invalid_training_file_fails_the_job_at_validation(server, client, bad_line, problem):
    lines = [json.dumps(example(i)) for i in range(12)]
    lines[2] = bad_line
    f = client.files.create(file=("train.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id)
    assert job.status == "validating_files"  # like OpenAI: accepted first, refused while validating
    assert server.advance(job.id) == "failed"
    error = client.fine_tuning.jobs.retrieve(job.id).error
    assert (error.code, error.param) == ("invalid_training_file", "training_file")
    assert error.message.startswith("The job failed due to an invalid training file. Invalid file format. ")
    assert problem in error.message


def test_fewer_than_ten_examples(server, client):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, [example(i) for i in range(7)]))
    assert server.advance(job.id) == "failed"
    error = client.fine_tuning.jobs.retrieve(job.id).error
    assert error.model_dump() == {"code": "invalid_n_examples", "param": "training_file",
                                  "message": "Training file has 7 example(s), but must have at least 10 examples"}


def test_unknown_model_and_unknown_file_are_refused_at_create(server, client):
    training = upload(client, [example(i) for i in range(10)])
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model="gpt-9", training_file=training)
    assert info.value.status_code == 400
    assert info.value.body == {"message": "Model gpt-9 is not available for fine-tuning or does not exist.",
                               "type": "invalid_request_error", "param": "model", "code": "model_not_available"}
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file="file-nosuchfile")
    assert info.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters={"n_epochs": 0})
    assert info.value.body["param"] == "hyperparameters.n_epochs"
    assert server.jobs == {}


# --- misbehaviour knobs -----------------------------------------------------------------------------


def test_rate_limit_reaches_the_client_with_retry_after(server, client):
    server.rate_limit_next(1, retry_after="0.05")
    with pytest.raises(openai.RateLimitError) as info:
        client.fine_tuning.jobs.list()
    assert info.value.response.headers["retry-after"] == "0.05"
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert client.fine_tuning.jobs.list().data == []  # only the next one
    # a client that retries honours Retry-After and gets through
    server.rate_limit_next(2, retry_after="0.02")
    assert client_for(server, max_retries=2).fine_tuning.jobs.list().data == []
    assert server.calls[("GET", "/v1/fine_tuning/jobs")] == 5
    assert [r["status"] for r in server.requests] == [429, 200, 429, 429, 200]


def test_errors_drops_and_route_filters(server, client):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, [example(i) for i in range(10)]))
    server.error_next(1, status=503)
    with pytest.raises(openai.InternalServerError) as info:
        client.fine_tuning.jobs.retrieve(job.id)
    assert info.value.status_code == 503
    server.drop_next(1, route=("GET", "/v1/fine_tuning/jobs/{id}"))
    assert client.fine_tuning.jobs.list().data[0].id == job.id  # another route is not dropped
    with pytest.raises(openai.APIConnectionError):
        client.fine_tuning.jobs.retrieve(job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
    assert server.calls[("GET", "/v1/fine_tuning/jobs/{id}")] == 3
    assert [r["status"] for r in server.requests if r["route"] == "/v1/fine_tuning/jobs/{id}"] == [503, "dropped", 200]
    server.rate_limit_next(1, retry_after=None, code="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as info:
        client.fine_tuning.jobs.retrieve(job.id)
    assert info.value.body["code"] == "insufficient_quota" and "retry-after" not in info.value.response.headers


def test_require_key(server):
    server.require_key = "sk-test"
    with pytest.raises(openai.AuthenticationError) as info:
        client_for(server, api_key="sk-wrong-key-1234").fine_tuning.jobs.list()
    assert info.value.body["code"] == "invalid_api_key"
    assert "sk-wrong-key-1234" not in info.value.body["message"]  # shown masked, like OpenAI
    assert client_for(server, api_key="sk-test").fine_tuning.jobs.list().data == []


def test_openai_base_url_environment_variable(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert openai.OpenAI(max_retries=0).fine_tuning.jobs.list().data == []
    assert server.requests[-1]["headers"]["authorization"] == "Bearer sk-env"


# --- pagination, auto mode, concurrency ----------------------------------------------------------------


def test_event_and_job_pagination(server, client):
    training = upload(client, [example(i) for i in range(10)])
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training,
                                         hyperparameters={"n_epochs": 1})
    server.finish(job.id)
    every = [e["id"] for e in reversed(server.jobs[job.id].events)]
    assert len(every) == 2 + 1 + 1 + 10 + 1 + 4  # created/validating, validated, started, steps, ckpt, done

    first = client.fine_tuning.jobs.list_events(job.id, limit=5)
    assert [e.id for e in first.data] == every[:5] and first.has_more is True
    second = client.fine_tuning.jobs.list_events(job.id, limit=5, after=first.data[-1].id)
    assert [e.id for e in second.data] == every[5:10]
    last = client.fine_tuning.jobs.list_events(job.id, limit=5, after=every[-3])
    assert [e.id for e in last.data] == every[-2:] and last.has_more is False
    assert [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=4)] == every  # auto-paging
    created = [e.created_at for e in first.data]
    assert created == sorted(created, reverse=True)

    ids = [client.fine_tuning.jobs.create(model=MODEL, training_file=training).id for _ in range(4)]
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[::-1][:2] and page.has_more is True
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == [*ids[::-1], job.id]


def test_auto_mode_steps_on_polling():
    with FakeFineTuning(auto_seconds=0.01) as server:
        client = client_for(server)
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, [example(i) for i in range(50)]))
        seen = []
        deadline = time.monotonic() + 10
        while (status := client.fine_tuning.jobs.retrieve(job.id).status) not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            seen.append(status)
            time.sleep(0.012)
        assert status == "succeeded"
        assert {"queued", "running"} <= set(seen)
        assert len(seen) <= 3 + 6  # one step per poll: validate, queue, start, 2 epochs (50 examples -> 2)


def test_concurrent_polling_while_advancing(server, client):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, [example(i) for i in range(10)]))
    errors = []

    def poll() -> None:
        try:
            for _ in range(10):
                client.fine_tuning.jobs.retrieve(job.id)
                client.fine_tuning.jobs.list_events(job.id, limit=3)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    server.finish(job.id)
    for t in threads:
        t.join()
    assert errors == []
    assert server.calls[("GET", "/v1/fine_tuning/jobs/{id}")] == 40
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"


def test_models_routes(server, client):
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload(client, [example(i) for i in range(10)]),
                                         hyperparameters={"n_epochs": 1})
    server.finish(job.id)
    name = server.job(job.id)["fine_tuned_model"]
    assert client.models.retrieve(name).owned_by == "org-fake"
    assert name in [m.id for m in client.models.list()]
    assert client.models.delete(name).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}])


def test_constructor_knobs_and_chaining_fine_tunes():
    seen = []

    def handler(request: dict) -> str:
        seen.append(request)
        return "scripted reply"

    with FakeFineTuning(handler, error_when_none={}, result_file_base64=True, org_name="acme",
                        max_checkpoints=None) as server:
        client = client_for(server)
        training = upload(client, [example(i) for i in range(10)])
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=training, hyperparameters={"n_epochs": 4})
        assert job.error is not None and job.error.model_extra == {} and job.error.code is None  # OpenAI's `{}`
        server.finish(job.id)
        done = client.fine_tuning.jobs.retrieve(job.id)
        assert done.fine_tuned_model.startswith(f"ft:{MODEL}:acme::")
        assert len(client.fine_tuning.jobs.checkpoints.list(job.id).data) == 4
        import base64
        csv = base64.b64decode(client.files.content(done.result_files[0]).content).decode()
        assert csv.startswith(RESULT_CSV_HEADER + "\n1,")
        reply = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "q"}])
        assert reply.choices[0].message.content == "scripted reply" and seen[0]["model"] == done.fine_tuned_model

        # a fine-tuned model can be fine-tuned again; fail_job works from validating_files too
        again = client.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=training)
        assert again.model == done.fine_tuned_model
        server.fail_job(again.id, "invalid_training_file", "scripted", param="training_file")
        assert server.advance() == {job.id: "succeeded", again.id: "failed"}
        assert server.job(again.id)["error"] == {"code": "invalid_training_file", "message": "scripted",
                                                 "param": "training_file"}
