"""The tokenizer half of the GGUF export: a byte-level BPE tokenizer as llama.cpp's "gpt2" vocabulary.

llama.cpp stores the vocabulary, merges, token types and special token ids as metadata, and names the
pre-tokenizer (how text is split before BPE) instead of storing it: `pre_tokenizer_name` maps the
tokenizer.json pre-tokenizers it recognises to those names. Anything else -- SentencePiece-style
vocabularies, unknown pre-tokenizers, normalizers llama.cpp does not apply -- is an ExportError that
names the reason and points at llama.cpp's own converter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import ExportError

CONVERTER_HINT = ("merge the run with `tunesmith merge RUN -o DIR` and convert DIR with llama.cpp's "
                  "convert_hf_to_gguf.py, which knows many more models and tokenizers")

#: llama.cpp pre-tokenizer names, by the tokenizer.json pre-tokenizer they stand for
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


def cannot_export(what: str, reason: str) -> ExportError:
    return ExportError(f"cannot export {what} to GGUF: {reason}", CONVERTER_HINT)


# ---------------------------------------------------------------------------------------------
# the tokenizer


@dataclass
class VocabSpec:
    """A byte-level BPE vocabulary as llama.cpp's "gpt2" tokenizer model stores it."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    chat_template: Any = None
    added: int = 0


def _byte_level(node: Any, *, regex: bool) -> bool:
    return (isinstance(node, dict) and node.get("type") == "ByteLevel" and not node.get("add_prefix_space", False)
            and bool(node.get("use_regex", True)) == regex)


def pre_tokenizer_name(pre: Any) -> str | None:
    """llama.cpp's name (`tokenizer.ggml.pre`) for a tokenizer.json pre-tokenizer, or None if unknown."""
    if _byte_level(pre, regex=True):
        return "gpt-2"
    if not (isinstance(pre, dict) and pre.get("type") == "Sequence"):
        return None
    steps = pre.get("pretokenizers") or []
    if len(steps) != 2:
        return None
    first, second = steps
    if first.get("type") == "Digits" and first.get("individual_digits") and _byte_level(second, regex=True):
        return "smollm"  # digits one by one, then GPT-2's split (SmolLM, SmolLM2)
    if (first.get("type") == "Split" and first.get("behavior") == "Isolated" and not first.get("invert")
            and _byte_level(second, regex=False)):
        return _SPLIT_NAMES.get((first.get("pattern") or {}).get("Regex"))
    return None


def _looks_special(token: str) -> bool:
    """llama.cpp's test for added tokens that should be control tokens though not marked special."""
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def _merge_text(merge: Any) -> str:
    if isinstance(merge, str):
        return merge
    # tokenizers >= 0.20 stores pairs; a space inside a part is written as U+0120 (llama.cpp's convention)
    return " ".join(part.replace(" ", chr(ord(" ") + 256)) for part in merge)


def vocab_spec(tokenizer: Any, vocab_size: int) -> VocabSpec:
    """The tokenizer as GGUF metadata, or ExportError when it is not a byte-level BPE tokenizer.

    Not `gguf.SpecialVocab`: it reads tokenizer files from a folder (this takes the tokenizer training
    used, which may exist only in memory) and guesses the add-BOS/EOS flags from the post-processor
    ("crude parsing", in its own words), where probing the tokenizer below is exact; its merge
    spelling is the same as `_merge_text`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise cannot_export("this tokenizer", "it has no tokenizer.json (not a fast tokenizer)")
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not model.get("merges"):
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else str(model.get("type"))
        raise cannot_export("this tokenizer", f"it is a {kind} tokenizer; only byte-level BPE (GPT-2 style, as in "
                           "SmolLM2, Llama 3 and Qwen2) is exported")
    pre = pre_tokenizer_name(data.get("pre_tokenizer"))
    if pre is None:
        raise cannot_export("this tokenizer", "its pre-tokenizer is not one llama.cpp knows by name "
                           f"({json.dumps(data.get('pre_tokenizer'))[:160]})")
    normalizer = data.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise cannot_export("this tokenizer", f"its {normalizer.get('type')} normalizer has no llama.cpp equivalent")
    vocab: dict[str, int] = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise cannot_export("this tokenizer", f"it has token ids up to {max(vocab.values())} but the model has only "
                           f"{vocab_size} embeddings")
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    import gguf

    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif token in added:
            special = getattr(decoder.get(i), "special", False) or _looks_special(token)
            tokens.append(token)
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(token)
            types.append(int(gguf.TokenType.NORMAL))
    special_ids = {kind: int(tid) for kind in ("bos", "eos", "unk", "pad")
                   if (tid := getattr(tokenizer, f"{kind}_token_id", None)) is not None}
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(with_specials) > len(plain)
    return VocabSpec(
        tokens=tokens, token_types=types, merges=[_merge_text(m) for m in model["merges"]], pre=pre,
        special_ids=special_ids,
        add_bos=extra and "bos" in special_ids and with_specials[0] == special_ids["bos"],
        add_eos=extra and "eos" in special_ids and with_specials[-1] == special_ids["eos"],
        chat_template=tokenizer.chat_template, added=len(added),
    )


def emulate_llama_cpp_pre(tokenizer: Any, pre: str) -> bool:
    """Give a tokenizer transformers rebuilt from the file the pre-tokenizer llama.cpp uses for `pre`,
    where transformers does not rebuild it itself (it has no digit splitting for "smollm")."""
    if pre != "smollm":
        return False
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return True
