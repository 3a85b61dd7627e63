"""`tunesmith push`: huggingface_hub uploads a staged run to a fake Hub on 127.0.0.1; nothing leaves the machine."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from fixtures.fake_hub import FakeHub
from tunesmith.cli import app
from tunesmith.evaluate.store import EvalStore
from tunesmith.runs import RunRegistry
from tunesmith.ship.hub import HubError, push_run

runner = CliRunner()
RUN = "20250101-000030-push-lora"
SUMMARY = {"exact_match": {"mean": 0.5, "lo": 0.25, "hi": 0.75, "n": 6},
           "stop_rate": {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": 6}}


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def project(ship):
    """The ship project with one more LoRA run: a plan, and a stored test evaluation."""
    root = ship["root"]
    run_dir = ship["add_run"](root, RUN, method="lora", base_model=ship["base"], adapter=ship["adapter"])
    plan = json.loads((run_dir / "plan.json").read_text())
    plan["derived"] = {"examples": 18, "train_examples": 16, "eval_examples": 2}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    EvalStore(RunRegistry(root / "runs")).save(subject=RUN, run_id=RUN, split="test", fingerprint="fp", settings={},
                                               summary=SUMMARY, items=[])
    return root


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub that takes the token hf_write (and hf_read, read-only); HF_ENDPOINT points at it."""
    import huggingface_hub.constants as hf_constants

    with FakeHub(tokens={"hf_write": "write", "hf_read": "read"}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", "hf_write")
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # the fake has no Xet storage; huggingface_hub read HF_HUB_DISABLE_XET at import, so set what it reads
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
        yield fake


def card_of(data: bytes) -> tuple[dict, str]:
    text = data.decode()
    meta, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body


def test_push_uploads_the_adapter_byte_for_byte_with_its_model_card(project, ship, hub):
    outcome = push_run(project, RUN, "alice/tiny-extractor")
    repo = hub.repos["alice/tiny-extractor"]
    adapter = ship["adapter"]
    expected = {p.name: p.read_bytes() for p in adapter.iterdir() if p.is_file() and p.name != "README.md"}
    assert set(repo.files) == set(expected) | {"README.md"}
    for name, data in expected.items():
        assert repo.files[name] == data, name
    assert expected["adapter_model.safetensors"] in hub.lfs.values()  # weights go through LFS, like on the Hub
    assert ("POST", "/alice/tiny-extractor.git/info/lfs/objects/batch") in hub.calls
    meta, body = card_of(repo.files["README.md"])
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert "base_model" not in meta  # the tiny base is a local directory, not a Hub repo
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0] == {"type": "exact_match", "value": 0.5, "name": "exact_match (95% CI 0.250-0.750, n=6)"}
    assert "| exact_match | 0.500 | 0.250 - 0.750 | 6 |" in body
    assert "- 18 examples: 16 trained on, 2 held out for the validation loss" in body
    assert repo.commits[-1]["summary"] == f"tunesmith push: run {RUN} (adapter)"
    assert hub.create_requests[-1] == {"name": "tiny-extractor", "organization": "alice", "type": "model"}
    assert outcome.url == f"{hub.url}/alice/tiny-extractor"
    assert outcome.folder == project / "runs" / RUN / "push" / "adapter"
    assert (outcome.folder / "README.md").read_bytes() == repo.files["README.md"]


def test_private_asks_for_a_private_repo(project, hub):
    result = cli("push", RUN, "--repo", "alice/secret", "--private", "-p", project)
    assert result.exit_code == 0, result.output
    assert hub.create_requests[-1]["visibility"] == "private"
    assert "(private)" in result.output and "README.md" in result.output
    assert "README.md" in hub.repos["alice/secret"].files


def test_private_into_an_existing_public_repo_is_refused_before_uploading(project, hub):
    assert cli("push", RUN, "--repo", "alice/open", "-p", project).exit_code == 0  # created public
    before = dict(hub.repos["alice/open"].files)
    result = cli("push", RUN, "--repo", "alice/open", "--private", "-p", project)
    assert result.exit_code != 0
    assert "alice/open already exists and is public: --private would upload into a public repository" in result.output
    assert "make it private on the Hub first" in result.output
    assert hub.repos["alice/open"].files == before


def test_dry_run_writes_the_folder_and_uploads_nothing(project, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # no token needed to look
    result = cli("push", RUN, "--repo", "alice/look", "--dry-run", "-p", project, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    folder = project / "runs" / RUN / "push" / "adapter"
    assert out["dry_run"] is True and out["folder"] == str(folder) and out["url"] is None
    names = {f["path"] for f in out["files"]}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= names
    assert names == {p.name for p in folder.iterdir()}
    assert hub.calls == [] and hub.repos == {}
    human = cli("push", RUN, "--repo", "alice/look", "--dry-run", "-p", project)
    assert f"staged {folder} (--dry-run: nothing uploaded)" in human.output


def test_missing_token_is_an_error_before_any_staging(project, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    folder = project / "runs" / RUN / "push" / "merged"
    result = cli("push", RUN, "--repo", "alice/x", "--merged", "-p", project)
    assert result.exit_code == 2
    assert "error: no Hugging Face token: pushing to alice/x needs one with write access" in result.output
    assert ("hint: set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens) or run "
            "`hf auth login`; --dry-run stages the folder without one") in result.output
    assert not folder.exists() and hub.calls == []


def test_a_refused_token_names_the_repo_and_the_fix(project, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubError) as info:
        push_run(project, RUN, "alice/tiny-extractor")
    assert info.value.message == "the Hub refused the token while pushing to alice/tiny-extractor (401 Unauthorized)"
    assert info.value.hint.startswith("the token is invalid or expired: set HF_TOKEN to a token with write access")
    assert f"the Hub ({hub.url}) said: Invalid credentials in Authorization header" in info.value.details


def test_a_read_only_token_is_told_it_may_not_write(project, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_read")
    result = cli("push", RUN, "--repo", "acme/model", "-p", project, "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["message"] == "the token may not write to acme/model (403 Forbidden)"
    assert error["hint"] == ("use a token with write access to 'acme' (a fine-grained token must name it), "
                             "or push to a namespace you own")


@pytest.mark.parametrize("args, message", [
    (["--repo", "no-slash"], "--repo 'no-slash' is not a Hub repository id"),
    (["--repo", "a/b", "--merged", "--gguf"], "--merged and --gguf exclude each other: a push uploads one kind"),
])
def test_bad_arguments_are_named(project, hub, args, message):
    result = cli("push", RUN, *args, "-p", project)
    assert result.exit_code == 2 and f"error: {message}" in result.output


def test_merged_dry_run_stages_a_verified_plain_checkpoint(project, hub, one_torch_thread):
    outcome = push_run(project, RUN, "alice/merged", kind="merged", dry_run=True)
    names = {name for name, _ in outcome.files}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= names
    assert "tunesmith-merge.json" not in names and "adapter_config.json" not in names
    meta, _ = card_of((outcome.folder / "README.md").read_bytes())
    assert meta["library_name"] == "transformers"


def test_gguf_dry_run_stages_the_export_and_reuses_it_next_time(project, hub, one_torch_thread):
    outcome = push_run(project, RUN, "alice/g", kind="gguf", dry_run=True)
    assert {name for name, _ in outcome.files} == {"model-f16.gguf", "model-f16.Modelfile", "README.md"}
    exported = project / "runs" / RUN / "export" / "model-f16.gguf"
    assert (outcome.folder / "model-f16.gguf").read_bytes() == exported.read_bytes()
    # the Modelfile travels with the file: SYSTEM and the stops are what Ollama users would lose without it
    assert (outcome.folder / "model-f16.Modelfile").read_text() == exported.with_suffix(".Modelfile").read_text()
    meta, body = card_of((outcome.folder / "README.md").read_bytes())
    assert meta["library_name"] == "gguf" and "gguf" in meta["tags"]
    assert "llama-cli -hf alice/g --jinja  # model-f16.gguf" in body
    said = []
    push_run(project, RUN, "alice/g", kind="gguf", dry_run=True, say=said.append)
    assert said == [f"using the earlier export {exported}"]
