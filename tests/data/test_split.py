import errno
import json
import os
from pathlib import Path

import pytest

from datagen import clean_examples, write_jsonl
from tunesmith.data.split import row_hash, split_file, verify_seal
from tunesmith.errors import DataError, OutputError, SealError, UsageError


def _split(tmp_path, rows, fraction=0.2):
    src = write_jsonl(tmp_path / "all.jsonl", rows)
    return split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=fraction)


def _inputs(path):
    return [json.loads(l)["messages"][1]["content"] for l in path.read_text().splitlines()]


def test_split_is_deterministic_and_sealed(tmp_path):
    rows = clean_examples(200)
    r1 = _split(tmp_path, rows)
    first_test = (tmp_path / "test.jsonl").read_bytes()
    assert r1.train_rows + r1.test_rows == 200
    assert 20 <= r1.test_rows <= 60  # ~20 %
    seal = json.loads(r1.seal.read_text())
    assert len(seal["rows"]) == r1.test_rows
    assert seal["rows"][0] == row_hash((tmp_path / "test.jsonl").read_bytes().split(b"\n")[0])
    _split(tmp_path, rows)
    assert (tmp_path / "test.jsonl").read_bytes() == first_test
    assert verify_seal(tmp_path / "test.jsonl").ok


def test_growing_dataset_keeps_old_test_rows(tmp_path):
    rows = clean_examples(150)
    _split(tmp_path, rows)
    old_test = set(_inputs(tmp_path / "test.jsonl"))
    grown = rows + clean_examples(150, seed=99)
    result = _split(tmp_path, grown)
    assert old_test <= set(_inputs(tmp_path / "test.jsonl"))
    assert result.kept_from_previous_seal == len(old_test) and result.dropped_from_previous_seal == 0


def test_duplicates_and_near_duplicates_land_on_one_side(tmp_path):
    rows = clean_examples(120)
    base = rows[0]["messages"][1]["content"]
    near = dict(rows[0])
    near = {"messages": [rows[0]["messages"][0], {"role": "user", "content": base + " extra"}, rows[0]["messages"][2]]}
    # plant copies and near-copies of every tenth row
    for i in range(0, 120, 10):
        m = rows[i]["messages"]
        rows.append(rows[i])
        rows.append({"messages": [m[0], {"role": "user", "content": m[1]["content"] + " x"}, m[2]]})
    rows.append(near)
    _split(tmp_path, rows, fraction=0.3)
    train, test = set(_inputs(tmp_path / "train.jsonl")), set(_inputs(tmp_path / "test.jsonl"))
    for i in range(0, 120, 10):
        text = rows[i]["messages"][1]["content"]
        in_test = text in test
        assert (text + " x" in test) == in_test
        assert (text in train) != in_test


def test_verify_detects_changed_added_removed(tmp_path):
    _split(tmp_path, clean_examples(200))
    test = tmp_path / "test.jsonl"
    original = test.read_text().splitlines()
    changed = list(original)
    changed[1] = changed[1].replace("Item", "ITEM")
    test.write_text("\n".join(changed) + "\n")
    report = verify_seal(test)
    assert not report.ok and report.changed == [2]
    test.write_text("\n".join(original + [json.dumps(clean_examples(1, seed=5)[0])]) + "\n")
    report = verify_seal(test)
    assert not report.ok and report.added == [len(original) + 1]
    test.write_text("\n".join(original[1:]) + "\n")
    report = verify_seal(test)
    assert not report.ok and report.removed == 1
    test.write_text("\r\n".join(original) + "\r\n")  # line endings only: rows hash the same
    assert verify_seal(test).ok


def test_verify_without_seal_or_test(tmp_path):
    with pytest.raises(SealError, match="no seal"):
        verify_seal(tmp_path / "test.jsonl")
    _split(tmp_path, clean_examples(60))
    (tmp_path / "test.jsonl").unlink()
    with pytest.raises(SealError, match="missing"):
        verify_seal(tmp_path / "test.jsonl")


def test_split_refuses_to_overwrite_source_and_bad_fraction(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(40))
    with pytest.raises(UsageError):
        split_file(src, src, tmp_path / "test.jsonl")
    with pytest.raises(UsageError, match="out of range"):
        split_file(src, tmp_path / "tr.jsonl", tmp_path / "te.jsonl", test_fraction=1.5)


def test_malformed_rows_go_to_train(tmp_path):
    rows = clean_examples(50) + ["{not json", '{"foo": 1}']
    r = _split(tmp_path, rows)
    assert r.unparsed_rows == 2
    assert "{not json" in (tmp_path / "train.jsonl").read_text()


# --- outputs on one path -------------------------------------------------------------------------

def _runner():
    from typer.testing import CliRunner

    from tunesmith.cli import app

    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def test_split_refuses_train_and_test_on_one_path(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(40))
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="train and test are the same file") as exc:
        split_file(src, tmp_path / "same.jsonl", tmp_path / "d" / ".." / "same.jsonl")
    assert "--train/--test" in exc.value.hint
    with pytest.raises(UsageError, match="source and test are the same file"):
        split_file(src, tmp_path / "train.jsonl", src)
    with pytest.raises(UsageError, match="train and test seal are the same file"):
        split_file(src, tmp_path / "test.seal.json", tmp_path / "test.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl", "d"]  # nothing written


def test_split_cli_refuses_train_and_test_on_one_path(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(40))
    result = _runner()("split", src, "--train", tmp_path / "same.jsonl", "--test", tmp_path / "same.jsonl")
    assert result.exit_code == 2 and "train and test are the same file" in result.stderr
    assert not (tmp_path / "same.jsonl").exists()


# --- a split that realises nothing like test_fraction ----------------------------------------------

def _one_cluster(n: int) -> list[dict]:
    """n examples with one input (different answers): a cluster that has to stay on one side, whatever
    counts as a near-duplicate."""
    prompt = "Summarise this customer ticket as one JSON object: the printer on floor 22 keeps jamming"
    return [{"messages": [{"role": "user", "content": prompt},
                          {"role": "assistant", "content": json.dumps({"topic": "printer", "ticket": i})}]}
            for i in range(n)]


def test_split_refuses_when_a_cluster_empties_a_side(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", _one_cluster(120))
    with pytest.raises(DataError, match=r"leave (train|test) without examples \((0 train / 120|120 train / 0) test") as exc:
        split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.15, near_threshold=0.8)
    assert "largest near-duplicate cluster holds 120" in exc.value.message
    assert "tunesmith check" in exc.value.message
    assert "raise checks.near_duplicate_threshold (now 0.8)" in exc.value.hint and "deduplicate" in exc.value.hint
    assert not (tmp_path / "test.jsonl").exists() and not (tmp_path / "test.seal.json").exists()


def test_split_refuses_too_few_examples_for_a_side(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(1))
    with pytest.raises(DataError, match="no near-duplicate clusters, but 1 example") as exc:
        split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    assert "add examples" in exc.value.hint


def test_split_warns_when_the_test_share_is_far_off(tmp_path):
    # the cluster goes whole to one side: the test share is ~4 % or ~80 %, never near the 15 % asked
    rows = clean_examples(40) + _one_cluster(160)
    result = _split(tmp_path, rows, fraction=0.15)
    share = result.test_rows / 200
    assert result.largest_cluster == 160
    assert len(result.warnings) == 1 and f"got {share:.0%} of the examples ({result.test_rows} of 200)" in result.warnings[0]
    assert "far from the 15% asked" in result.warnings[0]
    assert "largest near-duplicate cluster holds 160" in result.warnings[0]
    (tmp_path / "plain").mkdir()
    assert _split(tmp_path / "plain", clean_examples(200), fraction=0.2).warnings == []


def test_split_cli_prints_and_reports_the_share_warning(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(40) + _one_cluster(160))
    run = _runner()
    result = run("split", src, "--test-fraction", "0.15", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["largest_cluster"] == 160 and "largest near-duplicate cluster holds 160" in info["warnings"][0]
    result = run("split", src, "--test-fraction", "0.15")
    assert result.exit_code == 0 and "warning: the test set got" in result.stdout


# --- verify: every row counts, and how often --------------------------------------------------------

def test_verify_detects_a_duplicated_sealed_row(tmp_path):
    _split(tmp_path, clean_examples(100))
    test = tmp_path / "test.jsonl"
    original = test.read_text().splitlines()
    test.write_text("\n".join(original + [original[0]]) + "\n")
    report = verify_seal(test)
    assert not report.ok
    assert report.duplicated == [len(original) + 1] and report.added == [len(original) + 1] and report.removed == 0
    result = _runner()("split", "--verify", "--test", test)
    assert result.exit_code == 1 and "SEAL BROKEN" in result.stdout
    assert f"extra copies of sealed rows at line {len(original) + 1}" in result.stdout
    # a copy in place of another row: same count, one row gone
    swapped = [original[0]] + original[:1] + original[2:]
    test.write_text("\n".join(swapped) + "\n")
    report = verify_seal(test)
    assert not report.ok and report.duplicated == [2] and report.missing == [2] and report.removed == 1
    result = _runner()("split", "--verify", "--test", test, "--json")
    info = json.loads(result.stdout)
    assert result.exit_code == 1 and info["duplicated_lines"] == [2] and info["missing_sealed_rows"] == [2]


def test_verify_names_missing_rows_and_reorders(tmp_path):
    _split(tmp_path, clean_examples(100))
    test = tmp_path / "test.jsonl"
    original = test.read_text().splitlines()
    test.write_text("\n".join(original[:2] + original[3:]) + "\n")
    report = verify_seal(test)
    assert not report.ok and report.missing == [3] and report.removed == 1 and report.moved == []
    result = _runner()("split", "--verify", "--test", test)
    assert result.exit_code == 1 and "missing line 3 of the sealed file" in result.stdout
    # order is part of the seal (the rows are recorded in order)
    test.write_text("\n".join([original[1], original[0]] + original[2:]) + "\n")
    report = verify_seal(test)
    assert not report.ok and report.moved == [1, 2] and not (report.added or report.changed or report.missing)
    result = _runner()("split", "--verify", "--test", test)
    assert result.exit_code == 1 and "out of their sealed order at lines 1, 2" in result.stdout


# --- all outputs or none ------------------------------------------------------------------------------

def _snapshot(tmp_path):
    return {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}


def test_split_with_train_a_directory_changes_nothing(tmp_path):
    _split(tmp_path, clean_examples(60))
    before = _snapshot(tmp_path)
    (tmp_path / "all.jsonl").write_text((tmp_path / "all.jsonl").read_text() + json.dumps(clean_examples(1, seed=4)[0]) + "\n")
    before["all.jsonl"] = (tmp_path / "all.jsonl").read_bytes()
    (tmp_path / "traindir").mkdir()
    with pytest.raises(OutputError, match="cannot write the train file .*traindir: it is a directory"):
        split_file(tmp_path / "all.jsonl", tmp_path / "traindir", tmp_path / "test.jsonl")
    assert _snapshot(tmp_path) == before and list((tmp_path / "traindir").iterdir()) == []


def test_split_write_failure_leaves_old_files_and_no_temps(tmp_path, monkeypatch):
    _split(tmp_path, clean_examples(60))
    before = _snapshot(tmp_path)
    real_fsync = os.fsync

    def disk_full_on_train(fd):  # the training split is the one that fails, after the test split is done
        if ".train.jsonl." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_train)
    with pytest.raises(OutputError, match="train.jsonl: the disk is full") as exc:
        _split(tmp_path, clean_examples(70))
    assert "free some space" in exc.value.hint
    assert _snapshot(tmp_path) == {**before, "all.jsonl": (tmp_path / "all.jsonl").read_bytes()}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _fail_rename_to_train(monkeypatch):
    real_replace = os.replace

    def fail_for_train(src, dst):
        if Path(dst).name == "train.jsonl":
            raise PermissionError(errno.EACCES, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_for_train)


def test_split_names_outputs_replaced_before_a_failed_rename(tmp_path, monkeypatch):
    # the test set and its seal were renamed first; the failed train rename takes them back out
    _fail_rename_to_train(monkeypatch)
    with pytest.raises(OutputError, match="train.jsonl: Permission denied") as exc:
        _split(tmp_path, clean_examples(60))
    assert exc.value.details == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl"]  # no half split, no temp file


def test_split_rename_failing_part_way_puts_the_previous_split_back(tmp_path, monkeypatch):
    _split(tmp_path, clean_examples(60))
    before = _snapshot(tmp_path)
    _fail_rename_to_train(monkeypatch)
    with pytest.raises(OutputError, match="train.jsonl: Permission denied"):
        _split(tmp_path, clean_examples(70))
    assert _snapshot(tmp_path) == {**before, "all.jsonl": (tmp_path / "all.jsonl").read_bytes()}
    assert verify_seal(tmp_path / "test.jsonl").ok and len(list(tmp_path.iterdir())) == 4


def test_split_refuses_a_fifo_for_an_output(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(60))
    os.mkfifo(tmp_path / "train.fifo")
    with pytest.raises(OutputError) as exc:
        split_file(src, tmp_path / "train.fifo", tmp_path / "test.jsonl")
    assert exc.value.message == f"cannot write {tmp_path / 'train.fifo'}: it is a FIFO, and this output must be a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.jsonl", "train.fifo"]
    assert os.path.exists(tmp_path / "train.fifo") and not (tmp_path / "train.fifo").is_file()


# --- re-splitting must not move sealed rows into train ------------------------------------------

def test_resplit_keeps_every_sealed_row_in_test(tmp_path):
    rows = clean_examples(200)
    _split(tmp_path, rows, fraction=0.3)
    old_test = set(_inputs(tmp_path / "test.jsonl"))
    # a smaller fraction, and more data: the sealed rows stay sealed, the new rows are drawn as usual
    more = rows + clean_examples(100, seed=9)
    src = write_jsonl(tmp_path / "all.jsonl", more)
    result = split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.15)
    assert old_test <= set(_inputs(tmp_path / "test.jsonl"))
    assert not old_test & set(_inputs(tmp_path / "train.jsonl"))
    assert result.kept_from_previous_seal == len(old_test) and result.moved_from_previous_seal == 0
    assert any("because the earlier seal holds them" in w and "--reseal" in w for w in result.warnings)
    assert verify_seal(tmp_path / "test.jsonl").ok
    # --reseal draws a new test set: old rows may then move, and the split says so
    result = split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.15, reseal=True)
    assert result.moved_from_previous_seal > 0
    assert any("moved into train (resealed)" in w for w in result.warnings)
    assert not any("no longer in the source" in w for w in result.warnings)


def test_a_sealed_row_that_no_longer_parses_is_not_moved_into_train(tmp_path):
    _split(tmp_path, clean_examples(60))
    before = _snapshot(tmp_path)
    sealed_line = (tmp_path / "test.jsonl").read_text().splitlines()[0]
    broken = json.loads(sealed_line)
    broken["messages"][-1]["weight"] = 0  # now nothing to train on: malformed rows go to train
    seal = json.loads((tmp_path / "test.seal.json").read_text())
    seal["rows"][0] = row_hash(json.dumps(broken).encode())
    (tmp_path / "test.seal.json").write_text(json.dumps(seal))
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    rows = [broken if json.dumps(r) == sealed_line else r for r in rows]
    before["test.seal.json"] = (tmp_path / "test.seal.json").read_bytes()
    src = write_jsonl(tmp_path / "all.jsonl", rows)
    before["all.jsonl"] = src.read_bytes()
    with pytest.raises(SealError, match=r"1 row\(s\) of the previous sealed test set .* would move into") as exc:
        split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.2)
    assert "no longer parse" in exc.value.hint and "--reseal" in exc.value.hint
    assert _snapshot(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rows_are_placed_by_system_and_user_turns_as_in_every_earlier_seal():
    # the placement key of existing seals: changing it would move their rows on the next re-split
    from tunesmith.data.checks.dedup import split_key
    from tunesmith.data.formats import parse_record

    def ex(earlier_answer: str):
        return parse_record({"messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "Pick a number"},
            {"role": "assistant", "content": earlier_answer}, {"role": "user", "content": "Now double it."},
            {"role": "assistant", "content": "x"}]}, 1)

    from tunesmith.data.checks.dedup import input_key

    assert split_key(ex("3")) == split_key(ex("7"))  # one side for both: safe, and as every seal was drawn
    assert input_key(ex("3")) != input_key(ex("7"))  # yet they are no contradiction


def test_resplit_reports_only_rows_really_gone(tmp_path):
    rows = clean_examples(200)
    _split(tmp_path, rows, fraction=0.3)
    gone = set(sorted(_inputs(tmp_path / "test.jsonl"))[:3])
    kept = [r for r in rows if r["messages"][1]["content"] not in gone]
    src = write_jsonl(tmp_path / "all.jsonl", kept)
    result = split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.15, reseal=True)
    assert result.moved_from_previous_seal > 0  # still in the source, now in train: not "gone"
    assert result.dropped_from_previous_seal == 3
    assert "3 row(s) of the previous seal are no longer in the source" in result.warnings


def test_resplit_cli_keeps_sealed_rows_and_reseal_redraws(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(200))
    run = _runner()
    assert run("split", src, "--test-fraction", "0.3").exit_code == 0
    result = run("split", src, "--test-fraction", "0.15")
    assert result.exit_code == 0 and "because the earlier seal holds them" in result.stdout
    result = run("split", src, "--test-fraction", "0.15", "--reseal")
    assert result.exit_code == 0 and "moved into train (resealed)" in result.stdout
    assert "no longer in the source" not in result.stdout


def test_resplit_over_an_unreadable_seal(tmp_path):
    _split(tmp_path, clean_examples(60))
    (tmp_path / "test.seal.json").write_text("{broken")
    with pytest.raises(SealError, match="the seal is unreadable .*keep the previously sealed rows out") as exc:
        _split(tmp_path, clean_examples(60))
    assert "--reseal" in exc.value.hint
    src = tmp_path / "all.jsonl"
    result = split_file(src, tmp_path / "train.jsonl", tmp_path / "test.jsonl", test_fraction=0.2, reseal=True)
    assert result.kept_from_previous_seal is None and verify_seal(tmp_path / "test.jsonl").ok


# --- no usable examples -------------------------------------------------------------------------------

def test_split_refuses_input_without_examples(tmp_path):
    array = tmp_path / "all.json"
    array.write_text(json.dumps(clean_examples(30), indent=2))
    with pytest.raises(DataError, match="one JSON array, not JSON Lines") as exc:
        split_file(array, tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    assert f"tunesmith convert {array} -o {tmp_path / 'all.converted.jsonl'} --to messages" in exc.value.hint
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="holds no examples"):
        split_file(tmp_path / "empty.jsonl", tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    write_jsonl(tmp_path / "bad.jsonl", ["{not json", '{"foo": 1}'])
    with pytest.raises(DataError, match=r"none of its 2 row\(s\) is a well-formed example") as exc:
        split_file(tmp_path / "bad.jsonl", tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    assert "JSONL, one example object per line" in exc.value.hint
    assert not (tmp_path / "train.jsonl").exists() and not (tmp_path / "test.seal.json").exists()
    result = _runner()("split", array)
    assert result.exit_code == 2 and "tunesmith convert" in result.stderr


# --- test fraction bounds -------------------------------------------------------------------------------

def test_test_fraction_bounds_match_the_project_file(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", clean_examples(40))
    for bad in (0.6, 0.01):
        with pytest.raises(UsageError, match=rf"test fraction {bad} is out of range \(0.05-0.5\)"):
            split_file(src, tmp_path / "tr.jsonl", tmp_path / "te.jsonl", test_fraction=bad)
    run = _runner()
    result = run("split", src, "--test-fraction", "0.6")
    assert result.exit_code == 2 and "--test-fraction 0.6 is out of range (0.05-0.5)" in result.stderr
    assert run("split", src, "--test-fraction", "0.5").exit_code == 0


def test_the_share_warning_ignores_what_chance_explains_in_small_files():
    from tunesmith.data.split import _check_sides

    # 8 of 30 for 0.15: 1.9 standard deviations of hash placement, not a cluster problem
    assert _check_sides(Path("d.jsonl"), 30, 8, 1, 0.15, 0.8) == []
    # the same share of 1000 rows is no accident
    assert _check_sides(Path("d.jsonl"), 1000, 267, 1, 0.15, 0.8)
