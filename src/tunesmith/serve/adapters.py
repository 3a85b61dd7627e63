"""Which adapters may be served, from where, and on which base.

An adapter is named by a run of the project (id, prefix or 'latest') or by a directory. Directories
must lie inside the project's runs directory or a directory the operator allowed (`--allow-dir`),
after symlinks and `..` are resolved, so a request cannot make the server read arbitrary files; every file
the loader opens is resolved and checked the same way (a link inside an allowed directory may point
anywhere). Only LoRA adapters saved as safetensors are loaded (no pickle), and only onto the base they
were trained on: the base is recognised by name, by path, or by the content of its config and weights.
Answers name adapters relative to their allowed directory: a client learns nothing of the server's disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.serve.errors import AdapterRejected, BadRequest, Forbidden, NotFound

#: adapters loaded at once, by default. Each stays in (accelerator) memory until it is unloaded, and a
#: mixed batch runs one LoRA pass per adapter it holds: 16 covers a team's task adapters, while a client
#: that loads in a loop cannot fill the memory. `--max-adapters` raises it.
DEFAULT_MAX_ADAPTERS = 16
# no "." (PEFT uses adapter names inside module keys)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,63}$")
# initialisations that rewrite the base weights when the adapter loads (PiSSA, OLoRA, CorDA, LoftQ...):
# on a shared base they would change every model served
_SAFE_INITS = (True, False, "gaussian")


@dataclass
class ServedBase:
    ref: str  # what the operator named (builtin:..., a directory, a hub id)
    path: Path  # the checkpoint directory actually loaded
    name: str  # the model id clients use
    system_prompt: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def aliases(self) -> set[str]:
        return {self.name, self.ref, "base"}

    def public_ref(self) -> str:
        """What /v1/models shows as the base's root: a hub id or builtin name, never a local path."""
        if self.ref.startswith("builtin:") or not Path(self.ref).expanduser().exists():
            return self.ref
        return self.name


@dataclass
class AdapterInfo:
    name: str
    path: Path
    source: str
    run_id: str | None
    trained_on: str | None
    system_prompt: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    shown: str | None = None  # the path relative to its allowed directory (AdapterLocator.display)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "tunesmith",
                "root": self.shown or self.path.name, "parent": None, "run_id": self.run_id}


def check_name(name: str, base: ServedBase) -> str:
    if not NAME_RE.match(name or ""):
        raise BadRequest(f"adapter name {name!r} is not allowed",
                         "use 1-64 letters, digits, '_', ':' or '-', starting with a letter or digit",
                         param="name", code="invalid_adapter_name")
    if name in base.aliases():
        from tunesmith.serve.errors import Conflict

        raise Conflict(f"{name!r} is the base model's name", "pick another adapter name", param="name")
    return name


def _reason(exc: Exception) -> str:
    """Why a path failed, without the paths the exception quotes (answers carry no server paths)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "a symlink loop" if "loop" in str(exc) else str(exc).split(":")[0].rstrip(".")


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def weights_identity(model_dir: Path) -> str:
    """A cheap content identity of a checkpoint: its config (minus bookkeeping) and the first MiB of
    every weight file. Two copies of a model match; two different models (even same shape) do not."""
    digest = hashlib.sha256()
    config_path = model_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"):
            config.pop(key, None)
        digest.update(json.dumps(config, sort_keys=True).encode())
    for f in sorted(model_dir.glob("*.safetensors")):
        with f.open("rb") as fh:
            digest.update(f.name.encode() + fh.read(2**20))
    return digest.hexdigest()


class AdapterLocator:
    """Turns an adapter source (run reference or directory) into a checked adapter directory."""

    def __init__(self, base: ServedBase, *, project: Any | None = None, allowed_dirs: list[Path] | None = None) -> None:
        self.base = base
        self.project = project
        roots = [Path(d).expanduser().resolve() for d in (allowed_dirs or [])]
        if project is not None:
            roots.append(project.registry().root.resolve())
        self.roots = roots
        self._base_identity: str | None = None

    # -- where -----------------------------------------------------------------------------------

    def locate(self, source: str) -> tuple[Path, str | None]:
        """(adapter directory, run id or None)."""
        source = (source or "").strip()
        if not source:
            raise BadRequest("the adapter source is empty", "give a run id of the project or an adapter directory",
                             param="source")
        if "\x00" in source:  # no path or run id has one; the OS would refuse it deep inside pathlib
            raise BadRequest("the adapter source contains a NUL byte", "give a run id or a directory path",
                             param="source", code="invalid_path")
        looks_like_path = "/" in source or "\\" in source or source.startswith((".", "~"))
        if self.project is not None and not looks_like_path:
            from tunesmith.errors import TunesmithError, UsageError

            registry = self.project.registry()
            try:
                record = registry.get(source)
            except TunesmithError as exc:
                # "no run 'x' in DIR", or which runs an ambiguous prefix matches; DIR by its name only
                raise NotFound(exc.message.replace(str(registry.root), Path(registry.root).name),
                               "`tunesmith runs list` shows the runs; or give an adapter directory",
                               param="source", code="run_not_found") from exc
            run_dir = Path(record.path).resolve()
            if not _inside(run_dir, self.roots):
                raise Forbidden(f"run {record.id} lives outside the allowed directories",
                                "move it back under the runs directory, or pass --allow-dir", param="source")
            try:
                adapter = record.model(self.project.base_model).adapter_dir
            except UsageError:  # nothing trained yet
                adapter = None
            if adapter is None:
                raise AdapterRejected(f"run {record.id} has no LoRA adapter (status {record.status})",
                                      "finish training it, or serve a full fine-tune with `--base` on its model directory",
                                      param="source")
            return run_dir / adapter.name, record.id
        if not self.roots:
            raise Forbidden(f"adapter directory {source!r} refused: no directory is allowed",
                            "serve from a project (its runs directory is allowed) or pass --allow-dir DIR",
                            param="source")
        path = self._resolve(source)  # symlinks and .. resolved before the check
        if not _inside(path, self.roots):
            raise Forbidden(f"adapter directory {source!r} is outside the allowed directories",
                            "allowed: " + ", ".join(r.name for r in self.roots) + " (add one with --allow-dir)",
                            param="source")
        try:
            is_dir = path.is_dir()
            is_run = is_dir and (path / "adapter" / "adapter_config.json").is_file()
        except OSError as exc:  # a name too long for the file system, say
            raise BadRequest(f"adapter directory {source!r} cannot be read: {exc.strerror}", "check the path",
                             param="source", code="invalid_path") from None
        if not is_dir:
            raise NotFound(f"adapter directory {source!r} does not exist", "check the path", param="source",
                           code="adapter_not_found")
        if is_run:
            return path / "adapter", path.name
        return path, None

    def _resolve(self, source: str) -> Path:
        try:
            raw = Path(source).expanduser()
            if not raw.is_absolute() and self.project is not None:
                raw = self.project.root / raw
            return raw.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: "~user" of no such user, a link loop
            raise BadRequest(f"adapter source {source!r} is not a usable path: {_reason(exc)}", "check the path",
                             param="source", code="invalid_path") from None

    def display(self, path: Path) -> str:
        """`path` relative to the (innermost) allowed directory holding it: what answers may show."""
        for root in sorted(self.roots, key=lambda r: len(r.parts), reverse=True):
            if path == root or root in path.parents:
                return path.relative_to(root).as_posix() if path != root else root.name
        return path.name

    def scrub(self, text: str) -> str:
        """`text` (a library's error) with the allowed directories' absolute paths cut to their names."""
        for root in sorted(self.roots, key=lambda r: len(str(r)), reverse=True):
            text = text.replace(str(root), root.name)
        return text

    def checked_file(self, path: Path) -> Path | None:
        """`path` when it is a file that really lies inside an allowed directory, None when it is missing;
        a link to somewhere else is refused (the loader would read whatever it points at)."""
        try:
            real = path.resolve()
            exists = real.is_file()
        except (OSError, RuntimeError) as exc:
            raise AdapterRejected(f"cannot read {self.display(path)}: {_reason(exc)}", "check the adapter's files",
                                  param="source") from None
        if not _inside(real, self.roots):
            raise Forbidden(f"{self.display(path)} links to a file outside the allowed directories",
                            "copy the file into the adapter directory instead of linking to it", param="source")
        return path if exists else None

    # -- what ------------------------------------------------------------------------------------

    def inspect(self, adapter: Path, run_id: str | None) -> tuple[str | None, str | None]:
        """Check the adapter directory; (the base it was trained on, its run's system prompt)."""
        shown = self.display(adapter)
        config = self._adapter_config(adapter)
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise AdapterRejected(f"{shown} is a {config.get('peft_type')!r} adapter; only LoRA is served",
                                  "train with method lora or qlora", param="source")
        init = config.get("init_lora_weights", True)
        if init not in _SAFE_INITS:
            raise AdapterRejected(
                f"{shown} uses init_lora_weights={init!r}, which rewrites the base weights when it loads",
                "convert it to a plain LoRA first (PEFT's path_initial_model_for_weight_conversion)", param="source")
        if config.get("megatron_config") or config.get("layer_replication"):
            raise AdapterRejected(f"{shown} needs megatron_config or layer_replication, which this server does not "
                                  "load", "serve it with a plain LoRA adapter", param="source")
        if self.checked_file(adapter / "adapter_model.safetensors") is None:
            pickled = (adapter / "adapter_model.bin").is_file()
            raise AdapterRejected(
                f"{shown} has no adapter_model.safetensors"
                + (" (only a pickled adapter_model.bin)" if pickled else ""),
                "only safetensors adapters are loaded (pickle files can run code); re-save with "
                "save_pretrained(..., safe_serialization=True)", param="source")
        trained_on = config.get("base_model_name_or_path")
        if trained_on is not None and not isinstance(trained_on, str):
            raise AdapterRejected(f"{shown}/adapter_config.json: base_model_name_or_path is "
                                  f"{type(trained_on).__name__}, not a string", "re-save the adapter", param="source")
        project = (self._run_config(adapter) or {}).get("project")
        project = project if isinstance(project, dict) else {}
        # the run's config is tunesmith's own bookkeeping: a value of another type counts as not recorded
        run_base, system_prompt = (v if isinstance(v, str) else None
                                   for v in (project.get("base_model"), project.get("system_prompt")))
        run_base = self._recorded_base(adapter, run_id) or run_base
        if not self._same_base(trained_on, run_base):
            raise AdapterRejected(
                f"adapter {shown} was trained on {run_base or trained_on!r}, but this server's base is "
                f"{self.base.public_ref()!r}",
                "serve it with its own base model (tunesmith serve --base ...), or train it on this base",
                param="source", code="base_mismatch")
        return run_base or trained_on, system_prompt

    def _recorded_base(self, adapter: Path, run_id: str | None) -> str | None:
        """The base the project's run `run_id` was trained on, as eval and merge read it, when `adapter` is
        that run's; None for an adapter from elsewhere."""
        from tunesmith.errors import TunesmithError

        if self.project is None or run_id is None:
            return None
        try:
            record = self.project.registry().get(run_id)
            run = record.model(self.project.base_model)
            same = run.adapter_dir is not None and run.adapter_dir.resolve() == adapter.resolve()
        except (TunesmithError, OSError, RuntimeError):  # not a run of this project; a path loop
            return None
        # a run that recorded no base (made by hand) is checked by its adapter's own record instead
        return run.base_ref if same and record.base_model else None

    def _adapter_config(self, adapter: Path) -> dict[str, Any]:
        shown = self.display(adapter)
        config_path = self.checked_file(adapter / "adapter_config.json")
        if config_path is None:
            raise AdapterRejected(f"{shown} is not a PEFT adapter: adapter_config.json is missing",
                                  "point at a run's adapter directory (runs/<id>/adapter)", param="source")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AdapterRejected(f"cannot read {shown}/adapter_config.json: {_reason(exc)}",
                                  "check the adapter's files", param="source") from None
        except (ValueError, RecursionError) as exc:
            raise AdapterRejected(f"{shown}/adapter_config.json is not valid JSON: {type(exc).__name__}: {exc}",
                                  "re-save the adapter", param="source") from None
        if not isinstance(config, dict):
            raise AdapterRejected(f"{shown}/adapter_config.json holds a {type(config).__name__}, not a JSON object",
                                  "re-save the adapter", param="source")
        return config

    def _run_config(self, adapter: Path) -> dict[str, Any] | None:
        if adapter.name != "adapter":
            return None
        path = self.checked_file(adapter.parent / "config.json")
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def _same_base(self, trained_on: str | None, run_base: str | None) -> bool:
        if not trained_on and not run_base:
            return True  # nothing recorded: the shape check at load time is the guard
        names = {self.base.ref, str(self.base.path)}
        if run_base and run_base in names:
            return True
        if trained_on and trained_on in names:
            return True
        if any(self._is_base_dir(c) for c in (trained_on, run_base) if c):
            return True
        if run_base and run_base.startswith("builtin:"):
            # a model embedded in a package: compare where it resolves (local files only, no download)
            try:
                from tunesmith.models.resolve import resolve_model

                return resolve_model(run_base).path.resolve() == self.base.path.resolve()
            except Exception:  # noqa: BLE001 - unresolvable here: not this base
                return False
        return False

    def _is_base_dir(self, candidate: str) -> bool:
        """Whether `candidate` names a checkpoint directory holding this base (a copy of it counts)."""
        try:
            path = Path(candidate).expanduser()
            if not (path.is_dir() and (path / "config.json").is_file()):
                return False
            if path.resolve() == self.base.path.resolve():
                return True
            if self._base_identity is None:
                self._base_identity = weights_identity(self.base.path)
            return weights_identity(path) == self._base_identity
        except Exception:  # noqa: BLE001 - a path from a file the client chose: unreadable means not this base
            return False


def check_shapes(model: Any, adapter: Path, shown: str | None = None) -> None:
    """Every LoRA matrix must fit the base module it targets (a second guard after the base check).
    `shown`: the adapter's name in the message (answers carry no server paths)."""
    from safetensors import safe_open

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    problems = []
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as fh:
        for key in fh.keys():
            m = re.match(r"^(?:base_model\.model\.)?(.*)\.lora_([AB])\.(?:[^.]+\.)?weight$", key)
            if not m:
                continue
            module_name, which = m.groups()
            try:
                module = inner.get_submodule(module_name)
            except AttributeError:
                problems.append(f"{module_name} does not exist in the base")
                continue
            base_layer = getattr(module, "base_layer", module)
            weight = getattr(base_layer, "weight", None)
            if weight is None or weight.dim() != 2:
                continue
            shape = fh.get_slice(key).get_shape()
            out_f, in_f = weight.shape
            if which == "A" and shape[1] != in_f:
                problems.append(f"{key}: input {shape[1]} vs the base's {in_f}")
            if which == "B" and shape[0] != out_f:
                problems.append(f"{key}: output {shape[0]} vs the base's {out_f}")
            if len(problems) >= 3:
                break
    if problems:
        raise AdapterRejected(f"adapter {shown or adapter} does not fit this base ({'; '.join(problems)})",
                              "it was trained on another model; serve it with its own base", param="source",
                              code="base_mismatch")
