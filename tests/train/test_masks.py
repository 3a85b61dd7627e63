"""Assistant-only loss masks from the model's own chat template, checked token by token."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import Message
from tunesmith.models.chat import IGNORE, chat_weights, encode_chat, end_of_turn_ids, render, to_chat

SYSTEM = "Be terse and exact."
USER1 = "What is two plus two?"
ANSWER1 = '{"answer": 4}'
USER2 = "And the capital of France?"
ANSWER2 = "Paris, the city of light."

#: template kind -> (fixture name, end-of-turn marker, text before each assistant content)
TEMPLATES = {
    "chatml": ("tiny_model_dir", "<|im_end|>", "<|im_start|>assistant\n"),
    "llama3": ("tiny_llama3_model_dir", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


def _chat() -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER1},
        {"role": "assistant", "content": ANSWER1},
        {"role": "user", "content": USER2},
        {"role": "assistant", "content": ANSWER2},
    ]


@pytest.fixture(params=sorted(TEMPLATES))
def tok(request):
    from transformers import AutoTokenizer

    fixture, eot, header = TEMPLATES[request.param]
    model_dir = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return request.param, tokenizer, eot, header


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _trained(enc) -> list[int]:
    return [i for i, lab in enumerate(enc.labels) if lab != IGNORE]


def _runs(indices: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def test_two_turn_conversation_trains_exactly_assistant_contents_and_eot(tok):
    kind, tokenizer, eot, header = tok
    chat = _chat()
    enc = encode_chat(tokenizer, chat)
    text = render(tokenizer, chat)
    eot_id = tokenizer.convert_tokens_to_ids(eot)

    # The ids are exactly the rendered template (no extra BOS from the tokenizer on top of the template's).
    assert _decode(tokenizer, enc.input_ids) == text
    assert len(enc.input_ids) == len(enc.labels)
    if kind == "llama3":
        assert enc.input_ids[0] == tokenizer.bos_token_id and enc.input_ids[1] != tokenizer.bos_token_id

    # Labels are either -100 or the token itself (no shifting, no other values).
    for i, (tid, lab) in enumerate(zip(enc.input_ids, enc.labels)):
        assert lab in (IGNORE, tid), (i, tid, lab)

    trained = _trained(enc)
    assert _decode(tokenizer, [enc.input_ids[i] for i in trained]) == f"{ANSWER1}{eot}{ANSWER2}{eot}"
    assert enc.trainable == len(trained)
    assert enc.eot_trained and not enc.truncated

    # Two contiguous trained runs, each ending with the end-of-turn token and preceded by the assistant header.
    runs = _runs(trained)
    assert len(runs) == 2
    for run, answer in zip(runs, (ANSWER1, ANSWER2)):
        assert enc.input_ids[run[-1]] == eot_id
        assert _decode(tokenizer, [enc.input_ids[i] for i in run]) == answer + eot
        before = _decode(tokenizer, enc.input_ids[: run[0]])
        assert before.endswith(header), (kind, before[-60:])
    # Nothing after the last end-of-turn token is trained (ChatML's trailing newline stays -100).
    assert all(lab == IGNORE for lab in enc.labels[runs[-1][-1] + 1 :])

    # Token by token: trained iff the token lies inside "<content><eot>" of an assistant turn.
    spans, pos = [], 0
    for answer in (ANSWER1, ANSWER2):
        start = text.index(header + answer + eot, pos) + len(header)
        spans.append((start, start + len(answer + eot)))
        pos = spans[-1][1]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == len(enc.input_ids)
    for i, (s, e) in enumerate(offsets):
        inside = any(a <= s and e <= b for a, b in spans)
        assert (enc.labels[i] != IGNORE) == inside, (kind, i, _decode(tokenizer, [enc.input_ids[i]]), s, e)

    # Everything else (template scaffolding, system, both user turns, headers) is -100.
    untrained = _decode(tokenizer, [t for t, lab in zip(enc.input_ids, enc.labels) if lab == IGNORE])
    assert untrained == text.replace(ANSWER1 + eot, "", 1).replace(ANSWER2 + eot, "", 1)
    for piece in (SYSTEM, USER1, USER2, "system", "user"):
        assert piece in untrained


def test_weight_zero_assistant_turn_is_not_trained(tok):
    kind, tokenizer, eot, _ = tok
    chat = _chat()
    enc = encode_chat(tokenizer, chat, weights=[None, None, 0, None, None])
    trained = [enc.input_ids[i] for i in _trained(enc)]
    assert _decode(tokenizer, trained) == f"{ANSWER2}{eot}"
    # Through the Message/weight path as data files carry it, with the project's system prompt injected.
    messages = [Message("system", "old system"), Message("user", USER1), Message("assistant", ANSWER1, 0),
                Message("user", USER2), Message("assistant", ANSWER2, 1)]
    chat2 = to_chat(messages, SYSTEM)
    assert chat2 == _chat()
    enc2 = encode_chat(tokenizer, chat2, weights=chat_weights(messages, SYSTEM))
    assert enc2.labels == enc.labels and enc2.input_ids == enc.input_ids


def test_all_assistant_turns_weight_zero_trains_nothing(tok):
    _, tokenizer, _, _ = tok
    enc = encode_chat(tokenizer, _chat(), weights=[None, None, 0, None, 0])
    assert enc.trainable == 0 and set(enc.labels) == {IGNORE} and not enc.eot_trained


def test_end_of_turn_ids_contain_eos(tok):
    _, tokenizer, eot, _ = tok
    ids = end_of_turn_ids(tokenizer)
    assert tokenizer.eos_token_id in ids
    assert tokenizer.convert_tokens_to_ids(eot) in ids
    assert tokenizer.pad_token_id not in ids


def test_truncation_keeps_masks_aligned(tok):
    _, tokenizer, eot, _ = tok
    chat = _chat()
    full = encode_chat(tokenizer, chat)
    first_run_end = _runs(_trained(full))[0][-1]
    cut = encode_chat(tokenizer, chat, max_length=first_run_end + 1)
    assert cut.truncated and len(cut.input_ids) == first_run_end + 1
    assert cut.input_ids == full.input_ids[: first_run_end + 1] and cut.labels == full.labels[: first_run_end + 1]
    assert _decode(tokenizer, [cut.input_ids[i] for i in _trained(cut)]) == ANSWER1 + eot
    assert cut.eot_trained
