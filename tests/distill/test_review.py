"""The review store and the export, on real files: decisions, contract, hand edits, order, refusals, CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.data.sample import sample_diverse
from tunesmith.distill.provenance import ReviewGateError, review_gate, summarize
from tunesmith.distill import review as review_module
from tunesmith.distill.review import (
    InvalidAnswer,
    ReviewConflict,
    ReviewProgress,
    ReviewStore,
    count,
    open_review,
)
from tunesmith.distill.review_export import ExportResult, export_review
from tunesmith.errors import DataError, UsageError

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
runner = CliRunner()


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


# --- decisions --------------------------------------------------------------------------------


def test_decisions_set_the_documented_fields_and_leave_other_lines_byte_identical(review_project, make_review_rows):
    rows = make_review_rows(6)
    rows[1]["messages"].insert(2, {"role": "assistant", "content": '{"name":"early","score":1}'})
    rows[1]["messages"].insert(3, {"role": "user", "content": "And again?"})
    rows[3] = {"messages": rows[3]["messages"]}  # not generated: reviewed the same way
    # odd bytes in untouched lines: CRLF, a blank line, non-ASCII, spacing json.dumps would not write
    raw = [json.dumps(r, ensure_ascii=False) for r in rows]
    raw[4] = raw[4].replace('"role": "user"', '"role" :  "user"').replace("Rate", "Bewerte \u00e4 \u2603")
    data = (raw[0] + "\r\n" + raw[1] + "\n" + raw[2] + "\n\n" + raw[3] + "\n" + raw[4] + "\n" + raw[5] + "\n").encode()
    path = review_project / "generated.jsonl"
    path.write_bytes(data)
    before = lines_of(path)

    store = open_review(path)
    assert store.contract.describe().startswith("one JSON value") and store.progress().rows == 6
    store.decide(1, "accept", store.version)
    store.decide(2, "edit", store.version, answer='{"name":"fixed \u00e9","score":3}')
    store.decide(5, "reject", store.version, reason="  made-up facts  ")
    store.decide(6, "reject", store.version)

    after = lines_of(path)
    assert len(after) == len(before)
    changed = {i for i, (a, b) in enumerate(zip(before, after)) if a != b}
    assert changed == {0, 1, 4, 5}  # lines 1, 2, 5, 6 (0-based): line 3, the blank line and line 7 untouched
    assert after[0].endswith(b"\r") and after[0].startswith(b'{"messages":[{"role":"system"')  # compact, CRLF kept
    assert "\u00e9".encode() in after[1]  # ensure_ascii=False

    rec = {i: json.loads(after[i - 1]) for i in (1, 2, 5, 6)}
    assert rec[1]["review"]["status"] == "accepted" and ISO_UTC.match(rec[1]["review"]["at"])
    assert set(rec[1]["review"]) == {"status", "at"} and rec[1]["provenance"] == rows[0]["provenance"]
    edited = rec[2]
    assert edited["review"]["status"] == "edited" and ISO_UTC.match(edited["review"]["at"])
    assert edited["review"]["original"] == rows[1]["messages"][-1]["content"]
    assert edited["messages"][-1]["content"] == '{"name":"fixed \u00e9","score":3}'
    assert edited["messages"][2]["content"] == '{"name":"early","score":1}'  # only the LAST assistant turn
    assert rec[5]["review"] == {"status": "rejected", "at": rec[5]["review"]["at"], "reason": "made-up facts"}
    assert "reason" not in rec[6]["review"] and rec[6]["review"]["status"] == "rejected"
    assert store.progress().text() == "4 of 6 reviewed, 2 rejected"


def test_an_edit_is_refused_while_invalid_and_saved_when_valid(review_files):
    store = open_review(review_files.generated)
    before = review_files.generated.read_bytes()
    for bad, problem in (('{"name": 5, "score": 1}', "breaks the schema at $.name"),
                         ('{"name": "x"}', "'score' is a required property"),
                         ("not json", "is not JSON"), ("   ", "is empty")):
        assert any(problem in p for p in store.validate(bad)), (bad, store.validate(bad))
        with pytest.raises(InvalidAnswer) as err:
            store.decide(3, "edit", store.version, answer=bad)
        assert any(problem in p for p in err.value.problems)
    assert review_files.generated.read_bytes() == before
    assert store.validate('{"name": "ok", "score": 2}') == []
    store.decide(3, "edit", store.version, answer='{"name": "ok", "score": 2}')
    assert review_files.by_line()[3]["review"]["status"] == "edited"


def test_without_a_project_any_non_empty_answer_is_valid(tmp_path, make_review_rows):
    path = write(tmp_path / "rows.jsonl", make_review_rows(3, teacher=False))
    store = open_review(path)
    assert store.project is None and store.contract.empty
    assert store.validate("free text") == [] and store.validate("\n ") == ["is empty"]
    with pytest.raises(InvalidAnswer):
        store.decide(1, "edit", store.version, answer="")
    store.decide(1, "edit", store.version, answer="free text")
    rec = json.loads(path.read_text().splitlines()[0])
    assert rec["messages"][-1]["content"] == "free text" and rec["review"]["status"] == "edited"


def test_edit_twice_keeps_the_first_original_and_undo_restores_it(review_files):
    store = open_review(review_files.generated)
    first = review_files.by_line()[4]["messages"][-1]["content"]
    store.decide(4, "edit", store.version, answer='{"name":"one","score":1}')
    store.decide(4, "edit", store.version, answer='{"name":"two","score":2}')
    rec = review_files.by_line()[4]
    assert rec["review"]["original"] == first and rec["messages"][-1]["content"] == '{"name":"two","score":2}'
    store.decide(4, "accept", store.version)  # accepting an edited row keeps the edit
    assert review_files.by_line()[4]["review"]["status"] == "edited"
    store.decide(4, "reject", store.version, reason="still wrong")
    rec = review_files.by_line()[4]
    assert rec["review"]["status"] == "rejected" and rec["review"]["original"] == first
    store.decide(4, "undo", store.version)
    rec = review_files.by_line()[4]
    assert rec["review"] == {"status": "unreviewed"} and rec["messages"][-1]["content"] == first
    store.decide(4, "edit", store.version, answer='{"name":"x","score":1}')
    store.decide(4, "edit", store.version, answer=first)  # edited back to the original: an accept
    assert set(review_files.by_line()[4]["review"]) == {"status", "at"}
    assert review_files.by_line()[4]["review"]["status"] == "accepted"


def test_a_hand_edit_between_two_decisions_is_never_clobbered(review_files):
    store = open_review(review_files.generated)
    store.decide(1, "accept", store.version)
    lines = review_files.generated.read_text().splitlines(keepends=True)
    lines[9] = lines[9].replace("Rate item 9", "Rate item nine (fixed by hand)")
    review_files.generated.write_text("".join(lines))
    hand = review_files.generated.read_bytes()

    with pytest.raises(ReviewConflict) as err:
        store.decide(2, "accept", store.version)
    assert err.value.kind == "changed_on_disk" and "changed on disk" in err.value.message
    assert review_files.generated.read_bytes() == hand
    assert store.state()["disk_changed"] is True
    with pytest.raises(ReviewConflict) as err:
        store.decide(2, "accept", "0" * 64)  # a page that read an older version
    assert err.value.kind == "stale"

    store.reload()
    store.decide(2, "accept", store.version)
    recs = review_files.by_line()
    assert "fixed by hand" in recs[10]["messages"][1]["content"]
    assert recs[1]["review"]["status"] == "accepted" and recs[2]["review"]["status"] == "accepted"
    assert [p.name for p in review_files.project.iterdir() if p.name.endswith(".tmp")] == []


def test_the_most_diverse_rows_come_first(tmp_path, make_review_rows):
    rows = []
    for i in range(115):  # near-duplicates ...
        row = make_review_rows(1)[0]
        row["messages"][1]["content"] = f"Rate item {i}: a printer that jams on tray two every morning"
        rows.append(row)
    for i, text in enumerate(["Quantum chromodynamics lattice gauge Wilson loops confinement scale",
                              "Sourdough starter hydration levain autolyse crumb oven spring",
                              "Baroque counterpoint fugue subject countersubject stretto episode",
                              "Glacier moraine cirque arete firn ablation calving terminus",
                              "Kubernetes pod eviction taint toleration affinity scheduler quota"]):
        row = make_review_rows(1)[0]
        row["messages"][1]["content"] = text
        row["messages"][2]["content"] = json.dumps({"name": text.split()[0], "score": i})
        rows.append(row)  # ... and five outliers at the end of the file
    path = write(tmp_path / "gen.jsonl", rows)
    state = open_review(path).state()
    order = [r["line"] for r in state["rows"]]
    assert state["progress"]["target"] == 50 and sorted(order) == list(range(1, 121))
    assert set(range(116, 121)) <= set(order[:8])
    assert sorted(order[:50]) == sample_diverse(path).lines  # the `sample --diverse` choice ...
    assert order[50:] == sorted(order[50:])  # ... then the rest in file order
    assert [r["in_target"] for r in state["rows"]] == [True] * 50 + [False] * 70
    assert [r["rank"] for r in state["rows"]] == list(range(1, 121))
    store = open_review(path)  # an edit does not move rows: the order compares the teacher's answers
    store.decide(order[0], "edit", store.version, answer='{"name": "something else entirely", "score": 1}')
    assert [r["line"] for r in open_review(path).state()["rows"]] == order


def test_statuses_are_read_by_the_gate_s_own_function(review_files, monkeypatch):
    store = open_review(review_files.generated)
    store.decide(store.rows[0].line, "accept", store.version)
    seen: list[object] = []

    def says_rejected(record: object) -> str:
        seen.append(record)
        return "rejected"

    monkeypatch.setattr(review_module, "review_status", says_rejected)  # review reads no status of its own
    assert {r.status for r in store.rows} == {"rejected"} and len(seen) == 60
    seen.clear()
    progress = count(store.rows)
    assert (progress.rejected, progress.accepted, progress.decided) == (60, 0, 60) and len(seen) == 60
    assert store.state()["rows"][0]["status"] == "rejected"


def test_progress_is_review_progress_not_the_generate_callback_s_name(review_files):
    progress = open_review(review_files.generated).progress()
    assert isinstance(progress, ReviewProgress) and progress.text() == "0 of 50 reviewed, 0 rejected"
    assert not hasattr(review_module, "Progress")  # distill.session.Progress is the generate callback
    # the export lives in its own module; the store's module does not carry it
    assert not hasattr(review_module, "export_review") and not hasattr(review_module, "ExportResult")


# --- refusals ---------------------------------------------------------------------------------


def test_the_sealed_test_file_is_refused_by_both_rules(review_files, tmp_path, make_review_rows):
    test = review_files.project / "data" / "test.jsonl"
    test.parent.mkdir()
    write(test, make_review_rows(5))
    with pytest.raises(UsageError, match="sealed test set") as err:
        open_review(test)
    assert "leaks" in err.value.message and "tunesmith review generated.jsonl" in err.value.hint
    with pytest.raises(UsageError, match="sealed test set"):
        export_review(test, tmp_path / "out.jsonl")

    (tmp_path / "elsewhere").mkdir()
    loose = write(tmp_path / "elsewhere" / "held_out.jsonl", make_review_rows(5))
    (tmp_path / "elsewhere" / "held_out.seal.json").write_text("{}")
    with pytest.raises(UsageError, match=r"held_out\.seal\.json is beside it"):
        ReviewStore(loose)


def test_broken_and_non_chat_lines_are_refused_at_once_with_every_line_named(tmp_path, make_review_rows):
    rows = make_review_rows(3) + [
        "{broken",
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"instruction": "do", "output": "done"},
        [1, 2],
    ]
    path = write(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(DataError) as err:
        open_review(path)
    assert "5 line(s) cannot be reviewed" in err.value.message
    details = err.value.details
    assert [d.split(": ")[0] for d in details] == [f"{path}:{n}" for n in (4, 5, 6, 7, 8)]
    assert "sharegpt format" in details[1] and "instruction format" in details[3]
    assert "no assistant turn" in details[2] or "missing_assistant" in details[2]
    assert "tunesmith convert" in err.value.hint and "tunesmith check" in err.value.hint


# --- export -----------------------------------------------------------------------------------


def _decide_some(store: ReviewStore, accept: int, edit: int, reject: int) -> None:
    lines = [store.rows[i].line for i in store.order]
    for line in lines[:accept]:
        store.decide(line, "accept", store.version)
    for line in lines[accept:accept + edit]:
        store.decide(line, "edit", store.version, answer='{"name":"edited","score":0}')
    for line in lines[accept + edit:accept + edit + reject]:
        store.decide(line, "reject", store.version, reason="wrong")


def test_export_writes_accepted_and_edited_rows_with_stamps_that_pass_the_gate(review_files, tmp_path):
    store = open_review(review_files.generated)
    _decide_some(store, accept=44, edit=3, reject=3)  # 50 decisions: the target of 60 rows is met
    out = tmp_path / "reviewed.jsonl"
    result = export_review(review_files.generated, out)
    assert isinstance(result, ExportResult) and isinstance(result.progress, ReviewProgress)
    assert result.to_dict() == {
        "file": str(review_files.generated), "output": str(out), "rows": 60, "target": 50, "exported": 47,
        "accepted": 44, "edited": 3, "rejected_left_out": 3, "unreviewed_written": 0, "unreviewed_left_out": 10,
        "reviewed": 50, "left_to_review": 0, "target_met": True, "include_unreviewed": False}
    written = [json.loads(line) for line in out.read_text().splitlines()]
    source = {r["messages"][1]["content"]: r for r in review_files.records()}
    assert len(written) == 47
    stamp = {"file": "generated.jsonl", "rows": 60, "accepted": 44, "edited": 3, "rejected": 3, "target": 50}
    for rec in written:
        assert rec["review"]["of"] == stamp and rec["review"]["status"] in ("accepted", "edited")
        assert rec["messages"] == source[rec["messages"][1]["content"]]["messages"]
    user_turns = [r["messages"][1]["content"] for r in written]
    assert user_turns == [r["messages"][1]["content"] for r in review_files.records()
                          if r["review"]["status"] in ("accepted", "edited")]  # file order

    summary = summarize(out)
    assert (summary.rows, summary.generated, summary.accepted, summary.edited) == (47, 47, 44, 3)
    assert (summary.rejected, summary.rejected_left_out, summary.unreviewed) == (0, 3, 0)
    [group] = summary.groups
    assert (group.origin, group.rows, group.reviewed, group.target, group.met) == ("generated.jsonl", 60, 50, 50, True)
    review_gate(summary)  # passes
    with pytest.raises(ReviewGateError, match="rejected"):
        review_gate(summarize(review_files.generated))  # the reviewed file itself still holds rejected rows


def test_export_include_unreviewed_writes_them_and_the_gate_counts_the_target(review_files, tmp_path):
    store = open_review(review_files.generated)
    _decide_some(store, accept=10, edit=1, reject=2)
    out = tmp_path / "all.jsonl"
    result = export_review(review_files.generated, out, include_unreviewed=True).to_dict()
    assert (result["exported"], result["unreviewed_written"], result["unreviewed_left_out"]) == (58, 47, 0)
    assert (result["left_to_review"], result["target_met"]) == (37, False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["review"]["status"] == "unreviewed" for r in written) == 47
    assert not any(r["review"]["status"] == "rejected" for r in written)
    summary = summarize(out)
    assert summary.unreviewed == 47 and summary.groups[0].left == 37
    with pytest.raises(ReviewGateError, match="37 row"):
        review_gate(summary)

    _decide_some(open_review(review_files.generated), accept=50, edit=0, reject=0)  # now the target is met
    export_review(review_files.generated, out, include_unreviewed=True)
    review_gate(summarize(out))


def test_export_never_writes_over_its_input_or_a_project_data_file(review_files, tmp_path, make_review_rows):
    store = open_review(review_files.generated)
    _decide_some(store, accept=1, edit=0, reject=0)
    src = review_files.generated
    with pytest.raises(UsageError, match="the file under review"):
        export_review(src, review_files.project / "." / "generated.jsonl")
    for role, rel in (("source", "data.jsonl"), ("train", "data/train.jsonl"), ("test", "data/test.jsonl")):
        with pytest.raises(UsageError, match=f"data.{role}"):
            export_review(src, review_files.project / rel)
        assert not (review_files.project / rel).exists()
    (tmp_path / "sealed.seal.json").write_text("{}")
    with pytest.raises(UsageError, match="sealed test set"):
        export_review(src, tmp_path / "sealed.jsonl")
    fresh = write(tmp_path / "fresh.jsonl", make_review_rows(3))
    with pytest.raises(UsageError, match="nothing to export"):
        export_review(fresh, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


# --- the command line -------------------------------------------------------------------------


def cli(*args):
    return runner.invoke(app, ["review", *[str(a) for a in args]])


def test_cli_export_json_and_human_output(review_files, tmp_path):
    store = open_review(review_files.generated)
    _decide_some(store, accept=5, edit=2, reject=1)
    out = tmp_path / "reviewed.jsonl"
    result = cli(review_files.generated, "--export", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["exported"], data["accepted"], data["edited"], data["rejected_left_out"]) == (7, 5, 2, 1)
    assert (data["unreviewed_left_out"], data["left_to_review"], data["target_met"]) == (52, 42, False)
    assert len(out.read_text().splitlines()) == 7

    result = cli(review_files.generated, "--export", out, "-p", review_files.project)
    assert result.exit_code == 0, result.output
    assert f"exported 7 row(s) to {out}: 5 accepted, 2 edited" in result.stdout
    assert "left out: 1 rejected, 52 unreviewed (--include-unreviewed writes them too" in result.stdout
    assert "review target not met: 8 of 50 reviewed, 42 row(s) left to review" in result.stdout


@pytest.mark.parametrize("case", ["same_file", "project_file", "sealed_file", "broken", "nothing", "flag_alone"])
def test_cli_refusals_are_sentences_with_hints(case, review_files, tmp_path, make_review_rows):
    src = review_files.generated
    _decide_some(open_review(src), accept=1, edit=0, reject=0)
    if case == "same_file":
        args, says = [src, "--export", src], "that is the file under review"
    elif case == "project_file":
        args, says = [src, "--export", review_files.project / "data.jsonl"], "that is the project's data.source"
    elif case == "sealed_file":
        test = write(tmp_path / "t.jsonl", make_review_rows(2))
        (tmp_path / "t.seal.json").write_text("{}")
        args, says = [test], "it is a sealed test set"
    elif case == "broken":
        args, says = [write(tmp_path / "b.jsonl", ["{nope", '{"prompt": "p", "completion": "c"}']), "--export",
                      tmp_path / "o.jsonl"], "2 line(s) cannot be reviewed"
    elif case == "nothing":
        args, says = [write(tmp_path / "n.jsonl", make_review_rows(2)), "--export", tmp_path / "o.jsonl"], "nothing to export"
    else:
        args, says = [src, "--include-unreviewed"], "--include-unreviewed only goes with --export"
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "error: " in result.stderr and says in result.stderr and "hint: " in result.stderr
    assert "Traceback" not in result.output
    as_json = cli(*args, "--json")
    assert as_json.exit_code == 2 and says in json.loads(as_json.stdout)["error"]["message"]


def test_cli_without_fastapi_says_which_extra_to_install(review_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    result = cli(review_files.generated)
    assert result.exit_code == 2
    assert "the review page needs fastapi" in result.stderr and "pip install 'tunesmith[serve]'" in result.stderr
