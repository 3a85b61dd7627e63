"""Base models as `org/name@revision`: parsed without the network, resolved from the local Hub cache."""

from __future__ import annotations

import shutil

import pytest

from tunesmith.errors import ModelError
from tunesmith.models.hub_ref import HubRef, parse_hub_ref
from tunesmith.models.resolve import resolve_model

MAIN = "0123456789abcdef0123456789abcdef01234567"
OLD = "89abcdef0123456789abcdef0123456789abcdef"


def test_hub_id_with_revision_splits_into_repo_and_revision():
    assert parse_hub_ref("org/name@abc123") == HubRef("org/name", "abc123")
    assert parse_hub_ref("org/name") == HubRef("org/name", None)
    assert parse_hub_ref("org/name@refs/pr/3") == HubRef("org/name", "refs/pr/3")
    assert parse_hub_ref("org/name@abc123").ref == "org/name@abc123"


@pytest.mark.parametrize("text", ["builtin:smollm2-135m-instruct", "./models/x@v1", "/abs/path@v1", "model.gguf",
                                  "~/m@1", "just-a-name", "a/b/c"])
def test_what_is_not_a_hub_reference_is_left_alone(text):
    assert parse_hub_ref(text) is None


@pytest.mark.parametrize("text, why", [
    ("org/name@", "the revision after '@' is empty"),
    ("org/name@v1@v2", "'v1@v2' is not a git revision"),
    ("org/name@a..b", "'a..b' is not a git revision"),
])
def test_a_broken_revision_is_an_error_naming_it(text, why):
    with pytest.raises(ModelError) as info:
        parse_hub_ref(text)
    assert info.value.message == f"model reference {text!r}: {why}"
    assert info.value.hint == ("write a Hub model as org/name or org/name@revision (a commit hash, branch or tag), "
                               "e.g. HuggingFaceTB/SmolLM2-135M-Instruct@main")


@pytest.fixture
def cached_repo(tmp_path, monkeypatch, tiny_model_dir, isolated_cache):
    """A Hub cache holding two snapshots of someorg/tiny: main, and an older commit."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = home / "hub" / "models--someorg--tiny"
    for commit in (MAIN, OLD):
        shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    return repo


def test_revision_picks_that_snapshot_and_the_ref_keeps_it(cached_repo):
    pinned = resolve_model(f"someorg/tiny@{OLD}")
    assert pinned.path == cached_repo / "snapshots" / OLD
    assert pinned.ref == f"someorg/tiny@{OLD}"  # what a run records as its base_model
    assert resolve_model("someorg/tiny").path == cached_repo / "snapshots" / MAIN
    assert resolve_model("someorg/tiny@main").path == cached_repo / "snapshots" / MAIN


def test_a_revision_not_in_the_cache_offline_is_a_model_error(cached_repo):
    with pytest.raises(ModelError) as info:
        resolve_model("someorg/tiny@v9")
    assert info.value.message.startswith("cannot resolve model 'someorg/tiny@v9': ")
    assert "revision v9" in info.value.message


def test_the_size_of_a_pinned_revision_is_read_from_the_cache(cached_repo):
    from tunesmith.models.size import checkpoint_params, model_params

    params, source = model_params(f"someorg/tiny@{OLD}")
    assert (params, source) == (checkpoint_params(cached_repo / "snapshots" / OLD),
                                "safetensors headers (Hugging Face cache)")


def test_a_local_directory_with_at_in_its_name_is_a_path(tmp_path, tiny_model_dir, isolated_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny@v2")
    resolved = resolve_model("models/tiny@v2")
    assert resolved.kind == "directory"
    assert resolved.path == (tmp_path / "models" / "tiny@v2").resolve()
