"""The staged directory publish: a directory is written under a temp name beside its target, then renamed."""

import os
import stat

import pytest

from tunesmith.io import publish_dir, staged_dir


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_published_directory_appears_whole_and_readable(tmp_path):
    target = tmp_path / "deep" / "model"
    with staged_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".model.tmp-")
        assert not target.exists()  # nothing under the target's name until it is complete
        (tmp / "weights.bin").write_bytes(b"w")
        publish_dir(tmp, target)
    assert (target / "weights.bin").read_bytes() == b"w"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # mkdtemp's 0700 is not what a shared model wants
    assert _leftovers(target.parent) == []


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), staged_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"h")
        raise RuntimeError("verification failed")
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert _leftovers(tmp_path) == []


def test_an_existing_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"s")
    with staged_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"n")
        publish_dir(tmp, target)
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert _leftovers(tmp_path) == []


def test_an_empty_target_directory_is_taken(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    with staged_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"n")
        publish_dir(tmp, target)
    assert [p.name for p in target.iterdir()] == ["new.bin"]


def test_a_finished_copy_already_in_place_is_kept(tmp_path):
    """Two processes converting the same model: the one that publishes second keeps the first one's."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "done").write_text("first")
    with staged_dir(target) as tmp:
        (tmp / "done").write_text("second")
        publish_dir(tmp, target, finished=lambda d: (d / "done").is_file())
    assert (target / "done").read_text() == "first"
    assert _leftovers(tmp_path) == []


def test_an_unfinished_directory_in_place_is_replaced(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "partial").write_text("left by hand")
    with staged_dir(target) as tmp:
        (tmp / "done").write_text("new")
        publish_dir(tmp, target, finished=lambda d: (d / "done").is_file())
    assert [p.name for p in target.iterdir()] == ["done"]
    assert _leftovers(tmp_path) == []


def test_the_old_directory_comes_back_when_the_final_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".model.tmp-"):  # the staged dir's move into place
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"), staged_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"n")
        publish_dir(tmp, target)
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert _leftovers(tmp_path) == []
