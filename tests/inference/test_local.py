"""LocalBackend on the one decoding engine: the shared-prefix cache, out-of-memory halving, and models
whose cache cannot be re-padded, each against plain one-prompt-at-a-time ``model.generate``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fixtures.reference import plain_generate
from tunesmith.errors import ModelError
from tunesmith.inference.local import LocalBackend
from tunesmith.inference.types import DecodeSettings, Generation

WORDS = "the model data test train answer question label name value output input text small large fast".split()
#: a system prompt long enough (well over prefix.MIN_PREFIX tokens) to be worth sharing
TEMPLATE = "You are a careful assistant. Follow the format. " + " ".join(WORDS * 3)


def chats(n: int, system: str = TEMPLATE) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": system},
             {"role": "user", "content": " ".join(WORDS[: (i * 5) % 17 + 1] * (i + 1))}] for i in range(n)]


def plain(model, tok, chat, max_new_tokens: int) -> dict:
    return plain_generate(model, tok, chat, max_new_tokens).to_dict()


def test_shared_prefix_is_prefilled_once_and_changes_no_answer(lively_model: Path, one_torch_thread: None) -> None:
    backend = LocalBackend(lively_model, batch_size=4, device="cpu")
    prompts = chats(12)
    gens = [g.to_dict() for g in backend.generate(prompts, DecodeSettings(max_new_tokens=24))]
    store = backend.decoder().prefixes
    assert store.reused > store.prefilled / 2  # the template is most of every prompt, and it was reused
    assert gens == [plain(backend.model, backend.tokenizer, c, 24) for c in prompts]

    off = LocalBackend(lively_model, batch_size=4, device="cpu")
    off.prefix_reuse = False
    assert [g.to_dict() for g in off.generate(prompts, DecodeSettings(max_new_tokens=24))] == gens
    assert off.decoder().prefixes.reused == 0


def test_a_short_common_prefix_is_not_reused(lively_model: Path, one_torch_thread: None) -> None:
    backend = LocalBackend(lively_model, batch_size=4, device="cpu")
    short = [[{"role": "system", "content": "Hi."}, {"role": "user", "content": " ".join(WORDS[i:] * 3)}]
             for i in range(4)]  # the prompts part right after the few tokens of "Hi."
    backend.generate(short, DecodeSettings(max_new_tokens=4))
    assert backend.decoder().prefixes.reused == 0


def test_out_of_memory_halves_the_batch_and_starts_its_rows_again(lively_model: Path, one_torch_thread: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = chats(8)
    settings = DecodeSettings(max_new_tokens=16)
    want = [g.to_dict() for g in LocalBackend(lively_model, batch_size=8, device="cpu").generate(prompts, settings)]

    backend = LocalBackend(lively_model, batch_size=8, device="cpu")
    decoder = backend.decoder()
    forward = decoder._forward
    seen: list[int] = []

    def tight(ids, *args, **kwargs):  # decoding more than 2 rows at once "runs out of memory"
        seen.append(ids.shape[0])
        if ids.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(decoder, "_forward", tight)
    assert [g.to_dict() for g in backend.generate(prompts, settings)] == want
    assert max(seen) > 2 and decoder.max_batch <= 2


def test_out_of_memory_on_a_single_prompt_is_a_clear_error(lively_model: Path, one_torch_thread: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    backend = LocalBackend(lively_model, batch_size=1, device="cpu")
    decoder = backend.decoder()

    def never(*_args, **_kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decoder, "_forward", never)
    with pytest.raises(ModelError) as err:
        backend.generate(chats(2), DecodeSettings(max_new_tokens=8))
    assert "out of memory generating one answer" in err.value.message and "max_new_tokens 8" in err.value.message
    assert "lower max_new_tokens" in err.value.hint


def test_a_sliding_window_model_answers_one_prompt_at_a_time(serve_base: Path, tmp_path: Path,
                                                             one_torch_thread: None) -> None:
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tok = AutoTokenizer.from_pretrained(serve_base)
    config = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4096,
                           max_position_embeddings=2048, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    tok.save_pretrained(tmp_path / "mistral")
    backend = LocalBackend(tmp_path / "mistral", batch_size=4, device="cpu")
    prompts = chats(3)
    gens = [g.to_dict() for g in backend.generate(prompts, DecodeSettings(max_new_tokens=10))]
    assert backend.decoder().peak_batch == 1
    assert gens == [plain(backend.model, tok, c, 10) for c in prompts]


def test_decode_settings_key_is_unchanged_without_a_constraint() -> None:
    from tunesmith.inference.constraints import Constraint

    plain_key = DecodeSettings().key()
    assert "constraint" not in plain_key and "contract" not in plain_key
    constrained = dataclasses.replace(DecodeSettings(), constraint=Constraint.json_object())
    assert constrained.key() != plain_key and "json_object" in constrained.key()


OPEN_STRING = {"type": "object", "properties": {"note": {"type": "string"}, "n": {"type": "integer"}},
               "required": ["note", "n"], "additionalProperties": False}


def test_a_constrained_answer_open_at_its_budget_is_closed_and_parses(lively_model: Path, one_torch_thread: None) -> None:
    import json

    from jsonschema import Draft202012Validator

    from tunesmith.inference import local
    from tunesmith.inference.constraints import Constraint

    backend = LocalBackend(lively_model, batch_size=4, device="cpu")
    settings = DecodeSettings(max_new_tokens=6, constraint=Constraint.json_schema(OPEN_STRING))
    gens = backend.generate(chats(4), settings)  # 6 tokens: the note string is still open for every row
    for g in gens:
        Draft202012Validator(OPEN_STRING).validate(json.loads(g.text))
        assert g.finish_reason == "length" and 6 < g.output_tokens <= 6 + local.CLOSE_WITHIN

    # without the closing allowance the same answers are cut where the budget ends: not JSON
    original = local.CLOSE_WITHIN
    local.CLOSE_WITHIN = 0
    try:
        cut = backend.generate(chats(4), settings)
    finally:
        local.CLOSE_WITHIN = original
    assert all(g.finish_reason == "length" and g.output_tokens == 6 for g in cut)
    assert all(g.text.startswith('{"note":"') for g in cut)
