"""Fixtures for the server tests: adapters that answer differently, a live server on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fixtures.serving import PROMPTS, make_adapter, other_base, start  # noqa: F401


@pytest.fixture(scope="session")
def serve_assets(serve_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-assets")
    allowed = root / "adapters"
    allowed.mkdir()
    assets = {
        "root": root,
        "allowed": allowed,
        "alpha": make_adapter(serve_base, allowed / "alpha", seed=1),
        "beta": make_adapter(serve_base, allowed / "beta", seed=2),
        "gamma": make_adapter(serve_base, allowed / "gamma", seed=3),
    }
    wide = other_base(serve_base, root / "wide-base", hidden=96)
    assets["wide_adapter"] = make_adapter(wide, allowed / "wide", seed=4)
    twin = other_base(serve_base, root / "twin-base")
    assets["twin_adapter"] = make_adapter(twin, allowed / "twin", seed=5)
    pickled = allowed / "pickled"
    shutil.copytree(assets["alpha"], pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    assets["pickled"] = pickled
    outside = root / "outside"
    assets["outside"] = make_adapter(serve_base, outside, seed=6)
    return assets


@pytest.fixture(scope="session")
def expected(serve_base: Path, serve_assets: dict[str, Path]) -> dict[str, list[str]]:
    """Greedy answers to PROMPTS from each model alone (the evaluation backend, no server)."""
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.types import DecodeSettings

    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    settings = DecodeSettings(max_new_tokens=12)
    out = {"base": [g.text for g in LocalBackend(serve_base).generate(chats, settings)]}
    for name in ("alpha", "beta"):
        out[name] = [g.text for g in LocalBackend(serve_base, adapter_path=serve_assets[name]).generate(chats, settings)]
    assert out["alpha"] != out["beta"] != out["base"], "the fixture adapters must answer differently"
    assert all(len(set(answers)) > 1 for answers in out.values()), "each model must answer prompts differently"
    return out


@pytest.fixture(scope="module")
def server(serve_base: Path, serve_assets: dict[str, Path]):
    running = start(serve_base, serve_assets)
    yield running
    running.stop()
