"""`tunesmith push`: a run's adapter, merged model or GGUF file to the Hugging Face Hub, with a model card.

The folder to upload is staged first, whole, in `<run>/push/<kind>/` (written beside and renamed into
place, so it is never half there): the files, and README.md, the model card (`model_card`). `--dry-run`
stops there. Otherwise `huggingface_hub` creates the repository (or finds it) and commits the folder.
The token is looked up before any work (HF_TOKEN, else `hf auth login`'s stored one); the Hub's
401/403/404 become errors that name the repository and the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UsageError, one_line
from tunesmith.io import publish_dir, sha256_file, staged_dir, write_text_atomic
from tunesmith.progress import Say
from tunesmith.project import Project, load_project
from tunesmith.runs import RunModel, RunRecord

KINDS = ("adapter", "merged", "gguf")
PUSH_DIR = "push"
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
#: files of a run that stay local: PEFT's own placeholder card (ours replaces it) and tunesmith's records
_LOCAL_ONLY = ("README.md", "tunesmith-merge.json")
TOKEN_HINT = ("set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens) "
              "or run `hf auth login`")


class HubError(TunesmithError):
    """The Hub refused a push, or could not be reached."""


def _quiet(_msg: str) -> None:
    pass


@dataclass
class PushOutcome:
    run_id: str
    repo_id: str
    kind: str
    folder: Path
    files: list[tuple[str, int]]
    private: bool
    dry_run: bool
    url: str | None = None
    commit_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "repo": self.repo_id, "kind": self.kind, "folder": str(self.folder),
                "files": [{"path": p, "bytes": n} for p, n in self.files], "private": self.private,
                "dry_run": self.dry_run, "url": self.url, "commit_url": self.commit_url}


# ---------------------------------------------------------------------------------------------
# arguments and the token


def pick_kind(*, adapter: bool, merged: bool, gguf: bool) -> str:
    chosen = [k for k, on in (("adapter", adapter), ("merged", merged), ("gguf", gguf)) if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join('--' + k for k in chosen)} exclude each other: a push uploads one kind",
                         "pick one: --adapter (the default), --merged or --gguf")
    return chosen[0] if chosen else "adapter"


def check_repo_id(repo: str) -> str:
    repo = repo.strip()
    if not _REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo or repo.endswith((".git", ".")):
        raise UsageError(f"--repo {repo!r} is not a Hub repository id",
                         "write it as ORG/NAME (your user name or an organisation, then the model's name), "
                         "e.g. --repo alice/invoice-extractor")
    return repo


def hub_token(repo_id: str) -> str:
    """HF_TOKEN, else the token `hf auth login` stored; an error saying how to get one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError(f"no Hugging Face token: pushing to {repo_id} needs one with write access",
                       TOKEN_HINT + "; --dry-run stages the folder without one")
    return token


def hub_endpoint() -> str | None:
    """HF_ENDPOINT as the environment says now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


# ---------------------------------------------------------------------------------------------
# the command


def push_run(project_dir: Path | str, ref: str, repo: str, *, kind: str = "adapter", private: bool = False,
             dry_run: bool = False, say: Say | None = None, token: str | None = None,
             endpoint: str | None = None) -> PushOutcome:
    """Stage run `ref`'s `kind` with its model card, then (unless `dry_run`) upload it to `repo`."""
    say = say or _quiet
    if kind not in KINDS:
        raise UsageError(f"unknown push kind {kind!r}", "use --adapter, --merged or --gguf")
    repo_id = check_repo_id(repo)
    token = None if dry_run else (token or hub_token(repo_id))  # before any staging work is wasted
    project = load_project(project_dir)
    record = project.registry().get(ref)
    run = record.model(project.base_model)
    folder = stage_push(project, record, run, kind, repo_id, say)
    files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    outcome = PushOutcome(record.id, repo_id, kind, folder, files, private, dry_run)
    if dry_run:
        return outcome
    say(f"uploading {len(files)} files to {repo_id}")
    outcome.url, outcome.commit_url = upload(folder, repo_id, private=private, token=token,
                                             endpoint=endpoint or hub_endpoint(),
                                             message=f"tunesmith push: run {record.id} ({kind})")
    return outcome


def stage_push(project: Project, record: RunRecord, run: RunModel, kind: str, repo_id: str, say: Say) -> Path:
    """`<run>/push/<kind>/`: the files to upload and README.md, replaced whole on each push."""
    from tunesmith.ship.model_card import card_facts, render_card

    target = Path(record.path) / PUSH_DIR / kind
    with staged_dir(target) as tmp:
        _STAGERS[kind](project, run, tmp, say)
        names = sorted(p.name for p in tmp.iterdir())
        card = render_card(card_facts(project, record, kind=kind, repo_id=repo_id, files=names))
        write_text_atomic(tmp / "README.md", card)
        publish_dir(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------
# what goes in the folder


def _copy_files(source: Path, dest: Path) -> None:
    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=lambda _d, names: [n for n in names if n in _LOCAL_ONLY])


def _stage_adapter(project: Project, run: RunModel, tmp: Path, say: Say) -> None:
    if run.adapter_dir is None:
        raise UsageError(f"run {run.run_id} is a full fine-tune: it has no adapter to push",
                         f"push the model itself: tunesmith push {run.run_id} --repo ORG/NAME --merged")
    _copy_files(run.adapter_dir, tmp)


def _stage_merged(project: Project, run: RunModel, tmp: Path, say: Say) -> None:
    """A full fine-tune's checkpoint as it is; an adapter folded into its base and verified, as `merge` does."""
    if run.model_dir is not None:
        _copy_files(run.model_dir, tmp)
        return
    from tunesmith.models.resolve import tokenizer_in
    from tunesmith.ship.merge import (
        default_device,
        describe_prompts,
        load_merged,
        require_chat_template,
        save_merged,
        verification_prompts,
        verify_merged,
    )

    tokenizer = tokenizer_in(run.tokenizer_dir)
    require_chat_template(tokenizer, run.tokenizer_dir)
    items, settings = verification_prompts(project, None)
    device = default_device()
    say(f"merging run {run.run_id} ({run.method}) into {run.base_ref} on {device}")
    model, _dtype = load_merged(run, device=device)
    save_merged(model, tmp, run.tokenizer_dir, tokenizer)
    del model
    if items:
        say(f"verifying: greedy answers of the merged and the adapter model on {describe_prompts(items, settings)}")
        verify_merged(project, run, tmp, items, settings, device=device).require(
            "greedy outputs", allow=False,
            hint="nothing was pushed. Push the adapter instead (--adapter), or merge with `tunesmith merge "
                 "--allow-mismatch` and look at the differing answers first")


def _stage_gguf(project: Project, run: RunModel, tmp: Path, say: Say) -> None:
    """The run's f16 GGUF export (made now unless an earlier, unchanged one is there), linked in."""
    from tunesmith.ship.gguf_export import export_run, record_path

    exported = run.run_dir / "export" / "model-f16.gguf"
    if _earlier_export(exported, record_path(exported)):
        say(f"using the earlier export {exported}")
    else:
        export_run(project.root, run.run_id, quant="f16", out=exported, say=say)
    # the Modelfile beside it: without it an Ollama user loses the trained system prompt and the stops
    for source in (exported, exported.with_suffix(".Modelfile")):
        if not source.is_file():
            continue
        try:
            os.link(source, tmp / source.name)  # a GGUF file can be gigabytes: no copy where a link will do
        except OSError:
            shutil.copy2(source, tmp / source.name)


def _earlier_export(gguf: Path, record: Path) -> bool:
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("sha256") == sha256_file(gguf)
    except (OSError, ValueError, AttributeError):
        return False


_STAGERS: dict[str, Callable[[Project, RunModel, Path, Say], None]] = {
    "adapter": _stage_adapter, "merged": _stage_merged, "gguf": _stage_gguf}


# ---------------------------------------------------------------------------------------------
# the upload


def upload(folder: Path, repo_id: str, *, private: bool, token: str | None, endpoint: str | None,
           message: str) -> tuple[str, str]:
    """Create `repo_id` (or find it) and commit `folder` to it; (repo URL, commit URL)."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    try:
        # private=None leaves a new repo at the Hub's (or the organisation's) default visibility
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        # exist_ok: a repository that was already there keeps its visibility, whatever --private asked
        if private and not api.repo_info(repo_id, repo_type="model").private:
            raise HubError(f"{repo_id} already exists and is public: --private would upload into a public repository",
                           f"make it private on the Hub first (its Settings page), or push to another --repo; "
                           f"nothing was uploaded, the folder is staged at {folder}")
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, repo_type="model")
    except HfHubHTTPError as exc:
        raise hub_http_error(exc, repo_id, api.endpoint, folder) from None
    except (httpx.HTTPError, OSError) as exc:
        raise HubError(f"cannot reach the Hub at {api.endpoint} to push {repo_id}: {one_line(exc)}",
                       f"check the network (and HF_ENDPOINT), then push again; the folder is staged at {folder}") from None
    except ValueError as exc:  # huggingface_hub's own check of README.md's metadata, among others
        raise HubError(f"the Hub refused the push to {repo_id}: {one_line(exc)}",
                       f"look at {folder / 'README.md'}; if its metadata is tunesmith's own, please report it") from None
    return str(url), str(commit.commit_url)


def hub_http_error(exc: Any, repo_id: str, endpoint: str, folder: Path) -> HubError:
    """The Hub's answer as an error that names the repository and the fix."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    said = getattr(exc, "server_message", None) or one_line(exc)
    details = [f"the Hub ({endpoint}) said: {said}", f"staged folder: {folder}"]
    namespace = repo_id.split("/")[0]
    if status == 401:
        return HubError(f"the Hub refused the token while pushing to {repo_id} (401 Unauthorized)",
                        "the token is invalid or expired: " + TOKEN_HINT, details=details)
    if status == 403:
        return HubError(f"the token may not write to {repo_id} (403 Forbidden)",
                        f"use a token with write access to {namespace!r} (a fine-grained token must name it), "
                        "or push to a namespace you own", details=details)
    if status == 404:
        return HubError(f"{repo_id} was not found on the Hub (404 Not Found)",
                        f"check --repo: does {namespace!r} exist, and may this token create repositories in it?",
                        details=details)
    return HubError(f"the Hub answered {status or 'an error'} while pushing to {repo_id}",
                    "try again later (status: https://status.huggingface.co)", details=details)
