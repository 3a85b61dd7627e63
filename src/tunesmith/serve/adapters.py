"""Which adapters may be served, from where, and on which base.

An adapter is named by a run of the project (id, prefix or 'latest') or by a directory. Directories
must lie inside the project's runs directory or a directory the operator allowed (`--allow-dir`),
after symlinks and `..` are resolved, so a request cannot make the server read arbitrary files. Only
LoRA adapters saved as safetensors are loaded (no pickle), and only onto the base they were trained
on: the base is recognised by name, by path, or by the content of its config and weights.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.serve.errors import AdapterRejected, Forbidden, NotFound

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


@dataclass
class AdapterInfo:
    name: str
    path: Path
    source: str
    run_id: str | None
    trained_on: str | None
    system_prompt: str | None
    created: int = field(default_factory=lambda: int(time.time()))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "tunesmith",
                "root": str(self.path), "parent": None, "run_id": self.run_id}


def check_name(name: str, base: ServedBase) -> str:
    if not NAME_RE.match(name or ""):
        from tunesmith.serve.errors import BadRequest

        raise BadRequest(f"adapter name {name!r} is not allowed",
                         "use 1-64 letters, digits, '_', ':' or '-', starting with a letter or digit",
                         param="name", code="invalid_adapter_name")
    if name in base.aliases():
        from tunesmith.serve.errors import Conflict

        raise Conflict(f"{name!r} is the base model's name", "pick another adapter name", param="name")
    return name


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
            roots.append(project.path(project.train.runs_dir).resolve())
        self.roots = roots
        self._base_identity: str | None = None

    # -- where -----------------------------------------------------------------------------------

    def locate(self, source: str) -> tuple[Path, str | None]:
        """(adapter directory, run id or None)."""
        source = (source or "").strip()
        if not source:
            from tunesmith.serve.errors import BadRequest

            raise BadRequest("the adapter source is empty", "give a run id of the project or an adapter directory",
                             param="source")
        looks_like_path = "/" in source or "\\" in source or source.startswith((".", "~"))
        if self.project is not None and not looks_like_path:
            from tunesmith.errors import TunesmithError
            from tunesmith.train.api import registry_for

            try:
                record = registry_for(self.project).get(source)
            except TunesmithError as exc:
                raise NotFound(exc.message,  # "no run 'x' in DIR", or which runs an ambiguous prefix matches
                               "`tunesmith runs list` shows the runs; or give an adapter directory",
                               param="source", code="run_not_found") from exc
            run_dir = Path(record.path).resolve()
            if not _inside(run_dir, self.roots):
                raise Forbidden(f"run {record.id} lives outside the allowed directories ({run_dir})",
                                "move it back under the runs directory, or pass --allow-dir", param="source")
            adapter = run_dir / "adapter"
            if not (adapter / "adapter_config.json").is_file():
                raise AdapterRejected(f"run {record.id} has no LoRA adapter (status {record.status})",
                                      "finish training it, or serve a full fine-tune with `--base` on its model directory",
                                      param="source")
            return adapter, record.id
        if not self.roots:
            raise Forbidden(f"adapter directory {source!r} refused: no directory is allowed",
                            "serve from a project (its runs directory is allowed) or pass --allow-dir DIR",
                            param="source")
        raw = Path(source).expanduser()
        if not raw.is_absolute() and self.project is not None:
            raw = self.project.root / raw
        path = raw.resolve()  # symlinks and .. resolved before the check
        if not _inside(path, self.roots):
            raise Forbidden(f"adapter directory {source!r} is outside the allowed directories",
                            "allowed: " + ", ".join(str(r) for r in self.roots) + " (add one with --allow-dir)",
                            param="source")
        if not path.is_dir():
            raise NotFound(f"adapter directory {source!r} does not exist", "check the path", param="source",
                           code="adapter_not_found")
        if (path / "adapter" / "adapter_config.json").is_file():  # a run directory
            return path / "adapter", path.name
        return path, None

    # -- what ------------------------------------------------------------------------------------

    def inspect(self, adapter: Path, run_id: str | None) -> tuple[str | None, str | None]:
        """Check the adapter directory; (the base it was trained on, its run's system prompt)."""
        config_path = adapter / "adapter_config.json"
        if not config_path.is_file():
            raise AdapterRejected(f"{adapter} is not a PEFT adapter: adapter_config.json is missing",
                                  "point at a run's adapter directory (runs/<id>/adapter)", param="source")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AdapterRejected(f"{config_path} is not valid JSON: {exc}", "re-save the adapter",
                                  param="source") from exc
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise AdapterRejected(f"{adapter} is a {config.get('peft_type')!r} adapter; only LoRA is served",
                                  "train with method lora or qlora", param="source")
        init = config.get("init_lora_weights", True)
        if init not in _SAFE_INITS:
            raise AdapterRejected(
                f"{adapter} uses init_lora_weights={init!r}, which rewrites the base weights when it loads",
                "convert it to a plain LoRA first (PEFT's path_initial_model_for_weight_conversion)", param="source")
        if config.get("megatron_config") or config.get("layer_replication"):
            raise AdapterRejected(f"{adapter} needs megatron_config or layer_replication, which this server does not load",
                                  "serve it with a plain LoRA adapter", param="source")
        if not (adapter / "adapter_model.safetensors").is_file():
            pickled = (adapter / "adapter_model.bin").is_file()
            raise AdapterRejected(
                f"{adapter} has no adapter_model.safetensors" + (" (only a pickled adapter_model.bin)" if pickled else ""),
                "only safetensors adapters are loaded (pickle files can run code); re-save with "
                "save_pretrained(..., safe_serialization=True)", param="source")
        run_config = self._run_config(adapter)
        trained_on = config.get("base_model_name_or_path")
        run_base = (run_config or {}).get("project", {}).get("base_model")
        if not self._same_base(trained_on, run_base):
            raise AdapterRejected(
                f"adapter {adapter} was trained on {run_base or trained_on!r}, but this server's base is "
                f"{self.base.ref!r} ({self.base.path})",
                "serve it with its own base model (tunesmith serve --base ...), or train it on this base",
                param="source", code="base_mismatch")
        system_prompt = (run_config or {}).get("project", {}).get("system_prompt")
        return run_base or trained_on, system_prompt

    @staticmethod
    def _run_config(adapter: Path) -> dict[str, Any] | None:
        path = adapter.parent / "config.json"
        if adapter.name == "adapter" and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
        return None

    def _same_base(self, trained_on: str | None, run_base: str | None) -> bool:
        if not trained_on and not run_base:
            return True  # nothing recorded: the shape check at load time is the guard
        names = {self.base.ref, str(self.base.path)}
        if run_base and run_base in names:
            return True
        if trained_on and trained_on in names:
            return True
        for candidate in (trained_on, run_base):
            if not candidate:
                continue
            path = Path(candidate).expanduser()
            if path.is_dir() and (path / "config.json").is_file():
                if path.resolve() == self.base.path.resolve():
                    return True
                if self._base_identity is None:
                    self._base_identity = weights_identity(self.base.path)
                if weights_identity(path) == self._base_identity:
                    return True
        if run_base and run_base.startswith("builtin:"):
            # a model embedded in a package: compare where it resolves (local files only, no download)
            try:
                from tunesmith.models.resolve import resolve_model

                return resolve_model(run_base).path.resolve() == self.base.path.resolve()
            except Exception:  # noqa: BLE001 - unresolvable here: not this base
                return False
        return False


def check_shapes(model: Any, adapter: Path) -> None:
    """Every LoRA matrix must fit the base module it targets (a second guard after the base check)."""
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
        raise AdapterRejected(f"adapter {adapter} does not fit this base ({'; '.join(problems)})",
                              "it was trained on another model; serve it with its own base", param="source",
                              code="base_mismatch")
