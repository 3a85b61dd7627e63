"""`benchmarks/serve_soak.py` must not rot: a 20-second soak of a real `tunesmith serve` on the tiny model,
and the soak's own checks on answers made to fail them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "serve_soak.py"


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports its sibling serve_load
    import serve_soak

    return serve_soak


def test_a_short_soak_has_no_errors_and_no_cross_talk(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), "--minutes", "0.33", "--clients", "4", "--prompts", "2",
                          "--max-tokens", "16", "--work", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1) and run.stdout, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["errors"]["count"] == 0, result["errors"]
    assert result["cross_talk"]["count"] == 0, result["cross_talk"]["examples"]
    # it did what a soak must do, and a row decoded with another adapter would have shown
    requests = result["requests"]
    for kind in ("non_streamed", "streamed", "hung_up", "json_object", "json_schema"):
        assert requests[kind] > 0, kind
    assert result["adapter_cycles"]["loads"] > 0 and result["adapter_cycles"]["unloads"] > 0
    assert result["references"]["all_models_differ"] > 0
    assert len(result["rss"]["series_mb"]) > 2 and result["latency"]["last"]["n"] > 0


def test_an_answer_unlike_the_same_request_alone_is_cross_talk(soak) -> None:
    refs = {("base", 0, "text"): soak.Outcome("ok", "hello there", "stop"),
            ("alpha", 0, "text"): soak.Outcome("ok", "goodbye", "stop")}
    plain, cut = soak.Job("base", 0, "text", "sdk"), soak.Job("base", 0, "text", "hangup")
    answers = [soak.Outcome("ok", "hello there", "stop", job=plain),
               soak.Outcome("ok", "goodbye", "stop", job=plain),  # alpha's answer on a base row
               soak.Outcome("ok", "hello there", "length", job=plain),  # another finish
               soak.Outcome("hangup", "hello", job=cut),  # a prefix of its own answer
               soak.Outcome("hangup", "good", job=cut)]
    report = soak.check_answers(answers, refs, ["base", "alpha"])
    assert (report["count"], report["another_models_answer"]) == (3, 2)
    assert (report["whole_answers"], report["hung_up_prefixes"]) == (3, 2)


def test_a_stream_is_checked_chunk_by_chunk(soak) -> None:
    def chunk(delta: dict, finish: str | None = None) -> str:
        return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    whole = [chunk({"role": "assistant", "content": ""}), "", chunk({"content": "hi"}), chunk({"content": " you"}),
             chunk({}, "stop"), 'data: {"choices": [], "usage": {"completion_tokens": 2}}', "data: [DONE]"]
    streamed = soak.Job("base", 0, "text", "stream")
    assert soak.read_events(whole, streamed) == soak.Outcome("ok", "hi you", "stop", 2)
    # a hang-up after the first delta: what was read, not an error
    assert soak.read_events(whole, soak.Job("base", 0, "text", "hangup", 1)) == soak.Outcome("hangup", "hi")
    broken = {"no [DONE]": whole[:-1], "no usage": whole[:5] + whole[6:], "not JSON": whole[:3] + ["data: {oops"],
              "an error event": whole[:3] + ['data: {"error": {"message": "boom"}}'],
              "text after the finish": whole[:5] + [chunk({"content": "more"})] + whole[5:],
              "data after [DONE]": whole + [chunk({"content": "more"})]}
    for name, lines in broken.items():
        assert soak.read_events(lines, streamed).status == "error", name
