import os
import pathlib

import pytest

from fixtures.tiny_models import build_tiny_llama


# --- models: tiny offline checkpoints and an isolated model cache ------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny random LlamaForCausalLM + ChatML tokenizer (eos/pad set), built once per session.

    Shared by every test: copy it (shutil.copytree) before changing anything inside.
    """
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-chatml"), chat_template="chatml")


@pytest.fixture(scope="session")
def tiny_llama3_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Same as tiny_model_dir, with a Llama-3 style chat template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama3"), chat_template="llama3")


@pytest.fixture(scope="session")
def lively_model(tiny_model_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny model with large random weights: its greedy answers depend on the prompt (the plain
    tiny model answers newlines to everything) and some end with <|im_end|> before 24 tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("lively")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        model.get_input_embeddings().weight[tok.convert_tokens_to_ids("<|im_end|>")] *= 2
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def isolated_cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Point TUNESMITH_CACHE at a fresh temp dir for this test; returns that dir."""
    cache = tmp_path / "tunesmith-cache"
    cache.mkdir()
    monkeypatch.setenv("TUNESMITH_CACHE", str(cache))
    return cache


@pytest.fixture
def one_torch_thread():
    """One torch thread for this test: tiny models run faster (and deterministically) than with two
    contending threads, and a busy machine slows them less."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def serve_base(tiny_model_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny model made to answer each prompt differently (see fixtures.serving.loud_copy): the
    server's and the decoding engine's base model."""
    from fixtures.serving import loud_copy

    return loud_copy(tiny_model_dir, tmp_path_factory.mktemp("serve-base") / "loud")


@pytest.fixture(scope="session")
def talkative_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with its weights scaled up, so its greedy answers are varied text, not newlines."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    target = tmp_path_factory.mktemp("talkative") / "model"
    shutil.copytree(tiny_model_dir, target)
    model = AutoModelForCausalLM.from_pretrained(target)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8.0)
    model.save_pretrained(target)
    return target


# --- heavy tests: minutes each on 2 CPU cores, run by `make test-heavy` ----------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `heavy` repeat, on the real embedded model, a path a tiny-model test already covers in
    the default run; they keep the suite inside its 20 minutes only when left to `make test-heavy`."""
    if os.environ.get("TUNESMITH_HEAVY_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="heavy: minutes on a CPU; run with `make test-heavy` (TUNESMITH_HEAVY_TESTS=1)")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
