import json

import pytest

from datagen import clean_examples, words, write_jsonl
from tunesmith.data.split import row_hash, split_file, verify_seal
from tunesmith.errors import SealError, UsageError


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
