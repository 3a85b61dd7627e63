import json
from pathlib import Path

import pytest

from datagen import clean_examples, write_jsonl
from tunesmith.data.checks import CheckContext
from tunesmith.data.convert import convert_file
from tunesmith.data.diversity import default_sample_size
from tunesmith.data.fix import fix_file
from tunesmith.data.sample import sample_diverse
from tunesmith.errors import DataError, OutputError, UsageError


def test_fix_drops_errors_and_duplicates_and_logs_why(tmp_path):
    rows = clean_examples(40)
    m = rows[3]["messages"]
    rows.append(rows[3])                                                   # line 41: exact duplicate of 4
    rows.append({"messages": [m[0], {"role": "user", "content": m[1]["content"] + "!"}, m[2]]})  # 42: near dup of 4
    rows.append("{broken")                                                 # 43
    rows.append({"messages": [{"role": "user", "content": "hi"}]})         # 44: no assistant
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    before = src.read_bytes()
    result = fix_file(CheckContext(file=src), tmp_path / "clean.jsonl")
    assert src.read_bytes() == before  # never touches its input
    assert result.kept == 40 and result.dropped == 4
    log = [json.loads(l) for l in result.log.read_text().splitlines()]
    assert [e["line"] for e in log] == [41, 42, 43, 44]
    assert log[0]["checks"] == ["exact_duplicate"] and log[1]["checks"] == ["near_duplicate"]
    assert "invalid_json_line" in log[2]["checks"] and "missing_assistant" in log[3]["checks"]
    kept = (tmp_path / "clean.jsonl").read_text().splitlines()
    assert kept[3] == json.dumps(rows[3])  # the first of each cluster is kept


def test_fix_refuses_to_overwrite_input(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", clean_examples(35))
    with pytest.raises(UsageError, match="never writes over its input"):
        fix_file(CheckContext(file=src), src)


def test_convert_round_trip_between_formats(tmp_path):
    rows = [
        {"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be terse."},
        {"prompt": "Capital of France?", "completion": "Paris"},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    msgs = convert_file(src, tmp_path / "m.jsonl", "messages")
    assert msgs.written == 4 and not msgs.failed
    out = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert out[0]["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Sum\n\n1 2"},
                                  {"role": "assistant", "content": "3"}]
    inst = convert_file(tmp_path / "m.jsonl", tmp_path / "i.jsonl", "instruction")
    assert inst.written == 3
    assert inst.failed == [(4, "it has turns user/assistant/user/assistant; only [system,] user, assistant fits")]
    back = convert_file(tmp_path / "i.jsonl", tmp_path / "m2.jsonl", "messages")
    assert [json.loads(l) for l in (tmp_path / "m2.jsonl").read_text().splitlines()] == out[:3]
    pc = convert_file(src, tmp_path / "pc.jsonl", "prompt_completion")
    assert [ln for ln, _ in pc.failed] == [1, 4]  # a system prompt has no place in prompt/completion


def test_convert_reads_a_json_array_and_reports_bad_records(tmp_path):
    src = tmp_path / "arr.json"
    src.write_text(json.dumps([{"prompt": "p", "completion": "c"}, {"nope": 1}], indent=2))
    result = convert_file(src, tmp_path / "o.jsonl", "messages")
    assert result.written == 1 and result.failed[0][0] == 2 and "no known format" in result.failed[0][1]


def test_convert_unknown_target(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", clean_examples(2))
    with pytest.raises(UsageError, match="unknown target format"):
        convert_file(src, tmp_path / "o.jsonl", "yaml")


def test_sample_diverse_prefers_the_unusual(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "what is the weather like today in town"},
                          {"role": "assistant", "content": "sunny"}]} for _ in range(60)]
    rows[10] = {"messages": [{"role": "user", "content": "def f(*args, **kwargs): raise ValueError"},
                             {"role": "assistant", "content": "{\"raises\": [\"ValueError\"]}"}]}
    rows[40] = {"messages": [{"role": "user", "content": "Traduis: le chat noir mange"},
                             {"role": "assistant", "content": "the black cat eats"}]}
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    result = sample_diverse(src, 3, tmp_path / "s.jsonl")
    assert {11, 41} <= set(result.lines)
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 3


def test_sample_default_size_and_errors(tmp_path):
    assert default_sample_size(100) == 50 and default_sample_size(2000) == 200 and default_sample_size(20) == 20
    src = write_jsonl(tmp_path / "d.jsonl", clean_examples(70))
    assert len(sample_diverse(src).lines) == 50
    with pytest.raises(UsageError):
        sample_diverse(src, 0)
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(DataError, match="no well-formed examples"):
        sample_diverse(bad, 5)


# --- regressions: templates, multi-turn inputs, broken text ---------------------------------------

TRIAGE = ("You are a support triage assistant. Read the customer ticket below carefully and classify it into "
          "exactly one of the categories billing, technical or account. Answer with the category name only.\n\nTicket: ")


def _tickets(n: int = 120) -> list[dict]:
    import random

    from datagen import words

    rng = random.Random(5)
    return [{"messages": [{"role": "user", "content": TRIAGE + words(rng, rng.randint(3, 6))},
                          {"role": "assistant", "content": rng.choice(["billing", "technical", "account"])}]}
            for _ in range(n)]


def test_fix_and_split_keep_templated_rows_apart(tmp_path):
    """Regression: one shared instruction made 120 distinct tickets one cluster: fix kept 2, split put all on one side."""
    from tunesmith.data.split import split_file

    src = write_jsonl(tmp_path / "d.jsonl", _tickets())
    result = fix_file(CheckContext(file=src), tmp_path / "clean.jsonl")
    assert (result.kept, result.dropped) == (120, 0)
    split = split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.2)
    assert 10 <= split.test_rows <= 40 and split.train_rows + split.test_rows == 120


def test_fix_keeps_conversations_that_differ_in_an_earlier_answer(tmp_path):
    """Regression: same user turns, different earlier assistant turns were a "contradiction" and both dropped."""
    rows = clean_examples(40)
    for first, second in (("3", "6"), ("7", "14")):
        rows.append({"messages": [{"role": "user", "content": "Pick a number"}, {"role": "assistant", "content": first},
                                  {"role": "user", "content": "Now double it."},
                                  {"role": "assistant", "content": second}]})
    result = fix_file(CheckContext(file=write_jsonl(tmp_path / "d.jsonl", rows)), tmp_path / "clean.jsonl")
    assert (result.kept, result.dropped) == (42, 0)


LONE = '{"messages": [{"role": "user", "content": "emoji cut \\ud83d here"}, {"role": "assistant", "content": "ok"}]}'


def test_lone_surrogate_is_dropped_not_a_crash(tmp_path):
    """Regression: check/fix/convert/sample/split crashed with UnicodeEncodeError on a lone surrogate escape."""
    from tunesmith.data.split import split_file

    src = write_jsonl(tmp_path / "d.jsonl", clean_examples(40) + [LONE])
    fixed = fix_file(CheckContext(file=src), tmp_path / "clean.jsonl")
    assert fixed.dropped == 1
    log = json.loads(fixed.log.read_text())
    assert log["line"] == 41 and log["checks"] == ["invalid_utf8"] and "surrogate" in log["reasons"][0]
    converted = convert_file(src, tmp_path / "m.jsonl", "sharegpt")
    assert converted.written == 40 and [ln for ln, _ in converted.failed] == [41]
    assert 41 not in sample_diverse(src, 41).lines
    assert split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl").unparsed_rows == 1


def test_convert_lone_surrogate_in_a_json_array(tmp_path):
    src = tmp_path / "arr.json"
    src.write_text("[" + ",".join([json.dumps({"prompt": "p", "completion": "c"}), LONE]) + "]")
    result = convert_file(src, tmp_path / "o.jsonl", "messages")
    assert result.written == 1
    assert result.failed[0][0] == 2 and "half of a UTF-16 surrogate pair" in result.failed[0][1]


def test_convert_deeply_nested_json(tmp_path):
    """Regression: RecursionError out of convert, for a deep line and for a deep 'array' file."""
    from tunesmith.data.reader import TOO_DEEP
    from tunesmith.errors import FormatError

    lines = tmp_path / "deep.jsonl"
    lines.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + "[" * 100_000 + "\n")
    result = convert_file(lines, tmp_path / "o.jsonl", "messages")
    assert result.written == 1 and result.failed == [(2, TOO_DEEP)]
    array = tmp_path / "deep.json"
    array.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match="too deeply"):  # nothing converts: nothing is written
        convert_file(array, tmp_path / "o2.jsonl", "messages")
    assert not (tmp_path / "o2.jsonl").exists()


def test_convert_keeps_history_and_a_prompt_completion_system(tmp_path):
    rows = [{"instruction": "And now?", "output": "b", "history": [["first q", "first a"]]},
            {"system": "Be terse.", "prompt": "2+2=", "completion": "4"}]
    result = convert_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "m.jsonl", "messages")
    assert result.written == 2 and not result.failed
    out = [json.loads(l)["messages"] for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert out == [
        [{"role": "user", "content": "first q"}, {"role": "assistant", "content": "first a"},
         {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "b"}],
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2="},
         {"role": "assistant", "content": "4"}],
    ]


def test_convert_with_nothing_convertible_writes_nothing(tmp_path):
    from tunesmith.data.convert import convert_file
    from tunesmith.errors import FormatError

    src = tmp_path / "sys.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a"}]}) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("older\n")
    with pytest.raises(FormatError, match="no row of .* converts to prompt_completion") as ei:
        convert_file(src, out, "prompt_completion")
    assert "line 1" in ei.value.message
    assert out.read_text() == "older\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "sys.jsonl"]


# --- outputs that are not plain files, and fix's two outputs -------------------------------------

def _cli(*args):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_convert_to_a_character_device_leaves_the_device(tmp_path):
    import os
    import stat

    if os.geteuid() != 0:
        pytest.skip("making a character device (mknod) needs root")
    null = tmp_path / "null"  # a private /dev/null clone: a broken fix must never replace the machine's
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"mknod of a character device was refused here ({exc.strerror})")
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}])
    result = _cli("convert", src, "-o", null)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert f"wrote 1 example(s) as messages -> {null}" in result.stdout


def test_convert_to_stdout_prints_only_the_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a broken fix writes a file called "-" here
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": "d"}])
    result = _cli("convert", src, "-o", "-")
    assert result.exit_code == 0, result.output
    assert [json.loads(l) for l in result.stdout.splitlines()] == [
        {"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "d"}]}]
    assert result.stderr == "wrote 2 example(s) as messages -> -\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_fix_and_sample_to_stdout_keep_stdout_for_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a broken fix writes a file called "-" here
    rows = clean_examples(40)
    src = write_jsonl(tmp_path / "d.jsonl", rows + [rows[0]])
    fixed = _cli("fix", src, "-o", "-")
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stdout.splitlines() == [json.dumps(r) for r in rows]
    assert fixed.stderr.startswith("kept 40, dropped 1 -> - (no log of the dropped lines")
    sampled = _cli("sample", src, "--diverse", "3", "-o", "/dev/stdout")
    assert sampled.exit_code == 0, sampled.output
    assert len(sampled.stdout.splitlines()) == 3 and all(json.loads(l) in rows for l in sampled.stdout.splitlines())
    assert "3 most diverse of 41 examples -> /dev/stdout" in sampled.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # no "-" file, no "-.dropped.jsonl"


def test_json_results_and_data_on_stdout_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a broken fix writes a file called "-" here
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}])
    result = _cli("convert", src, "-o", "-", "--json")
    assert result.exit_code == 2
    err = json.loads(result.stdout)["error"]
    assert err["message"] == "--json and -o - both want stdout"
    assert "-o FILE" in err["hint"]


def test_convert_into_a_pipe_closed_early_says_the_output_is_incomplete(tmp_path):
    import subprocess
    import sys

    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"p{i} " + "x" * 100, "completion": "c"} for i in range(3000)])
    proc = subprocess.Popen([str(Path(sys.executable).parent / "tunesmith"), "convert", str(src), "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 2
    assert "error: cannot write -: the reader closed it before the end (broken pipe)" in err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_fix_keeps_its_old_output_when_the_log_cannot_be_written(tmp_path):
    rows = clean_examples(40)
    src = write_jsonl(tmp_path / "d.jsonl", rows + [rows[0]])
    out = tmp_path / "clean.jsonl"
    out.write_text("old\n")
    (tmp_path / "clean.jsonl.dropped.jsonl").mkdir()  # the second output cannot be written
    with pytest.raises(OutputError, match="clean.jsonl.dropped.jsonl: it is a directory"):
        fix_file(CheckContext(file=src), out)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.jsonl", "clean.jsonl.dropped.jsonl", "d.jsonl"]


def test_fix_writes_no_output_when_the_log_runs_out_of_space(tmp_path, monkeypatch):
    import errno
    import os

    rows = clean_examples(40)
    src = write_jsonl(tmp_path / "d.jsonl", rows + [rows[0]])
    real_fsync = os.fsync

    def disk_full_on_the_log(fd):
        if ".dropped.jsonl." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_the_log)
    with pytest.raises(OutputError, match="clean.jsonl.dropped.jsonl: the disk is full"):
        fix_file(CheckContext(file=src), tmp_path / "clean.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # neither output, no temp file


def test_fix_cli_says_an_output_symlink_loop_in_words(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", clean_examples(40))
    (tmp_path / "out.jsonl").symlink_to("out.jsonl")
    result = _cli("fix", src, "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / 'out.jsonl'} is a symlink loop, not a file to write" in result.stderr
    assert "Traceback" not in result.output
