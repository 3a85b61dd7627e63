"""`tunesmith export --format gguf`: files transformers (and so llama.cpp's layout) read back exactly."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fixtures.tiny_models import build_tiny_tokenizer
from tunesmith.cli import app
from tunesmith.errors import ExportError
from tunesmith.ship.gguf_export import check_exportable, permute_qk, record_path, tensor_type, write_gguf
from tunesmith.ship.gguf_vocab import LLAMA3_SPLIT, QWEN2_SPLIT, pre_tokenizer_name, vocab_spec

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_gguf(path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()
              if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    fields["n_tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    fields["token_types"] = reader.fields["tokenizer.ggml.token_type"].contents()
    return fields, {t.name: t.tensor_type.name for t in reader.tensors}


def export_json(ship, run, *extra):
    result = cli("export", ship["runs"][run], "--format", "gguf", "-p", ship["root"], "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- round trips through transformers ---------------------------------------------------------


def test_f16_export_of_a_lora_run_round_trips_exactly(ship, tmp_path):
    out = export_json(ship, "lora", "-o", tmp_path / "tiny.gguf")
    n = ship["prompts"]
    assert (out["template"]["identical"], out["template"]["total"]) == (n, n)
    assert (out["outputs"]["identical"], out["outputs"]["total"]) == (n, n)
    assert out["architecture"] == "LlamaForCausalLM" and out["gguf_architecture"] == "llama"
    fields, tensors = read_gguf(tmp_path / "tiny.gguf")
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2" and bool(fields["tokenizer.ggml.add_bos_token"]) is False
    assert fields["tokenizer.chat_template"] == (ship["adapter"] / "chat_template.jinja").read_text()
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 4
    assert fields["llama.rope.dimension_count"] == 16 and fields["llama.context_length"] == 2048
    assert fields["general.file_type"] == 1
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tensors["token_embd.weight"] == "F16" and tensors["blk.0.attn_q.weight"] == "F16"
    assert tensors["blk.0.attn_norm.weight"] == "F32" and tensors["output_norm.weight"] == "F32"
    record = json.loads(record_path(tmp_path / "tiny.gguf").read_text())
    assert record["outputs"]["identical"] == n and record["template"]["identical"] == n
    assert record["run_id"] == ship["runs"]["lora"] and len(record["sha256"]) == 64
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp files gone


def test_q8_0_export_loads_and_is_reported(ship):
    out = export_json(ship, "lora", "--quant", "q8_0")
    path = ship["root"] / "runs" / ship["runs"]["lora"] / "export" / "model-q8_0.gguf"
    assert out["path"] == str(path) and path.exists() and record_path(path).exists()
    assert out["outputs"]["total"] == ship["prompts"] and out["template"]["identical"] == ship["prompts"]
    assert out["tensors"]["Q8_0"] > 0 and out["tensors"]["F32"] > 0
    _fields, tensors = read_gguf(path)
    assert tensors["blk.1.ffn_down.weight"] == "Q8_0"  # rows of 128 = four 32-blocks
    human = cli("export", ship["runs"]["lora"], "-p", ship["root"], "--quant", "q8_0", "--verify-n", "2")
    assert human.exit_code == 0, human.output
    assert "template token ids: 2/2 identical" in human.stdout and "greedy outputs: " in human.stdout
    assert "/2 identical (GGUF q8_0 loaded by transformers vs merged model" in human.stdout


def test_gqa_llama_with_untied_output_and_llama3_template(ship, tmp_path):
    out = export_json(ship, "gqa", "-o", tmp_path / "gqa.gguf")
    n = ship["prompts"]
    assert out["template"]["identical"] == n and out["outputs"]["identical"] == n
    fields, tensors = read_gguf(tmp_path / "gqa.gguf")
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert bool(fields["tokenizer.ggml.add_bos_token"]) is True and "tokenizer.ggml.bos_token_id" in fields
    assert tensors["output.weight"] == "F16"


def test_qwen2_with_biases_and_padded_vocabulary(ship, tmp_path):
    out = export_json(ship, "qwen2", "-o", tmp_path / "q.gguf")
    n = ship["prompts"]
    assert out["gguf_architecture"] == "qwen2"
    assert out["template"]["identical"] == n and out["outputs"]["identical"] == n
    fields, tensors = read_gguf(tmp_path / "q.gguf")
    assert fields["general.architecture"] == "qwen2"
    assert tensors["blk.0.attn_q.bias"] == "F32" and tensors["blk.1.attn_v.bias"] == "F32"
    tokenizer_size = len(build_tiny_tokenizer("chatml"))
    assert fields["n_tokens"] == tokenizer_size + 8 and list(fields["token_types"][-8:]) == [5] * 8  # UNUSED


def test_digit_splitting_tokenizer_is_written_as_smollm(ship, tmp_path):
    # transformers rebuilds a "smollm" vocabulary without the digit split; the check applies llama.cpp's
    out = export_json(ship, "digits", "-o", tmp_path / "d.gguf", "--verify-n", "3")
    assert out["template"]["identical"] == 3 and out["outputs"]["identical"] == 3
    fields, _ = read_gguf(tmp_path / "d.gguf")
    assert fields["tokenizer.ggml.pre"] == "smollm"


# --- layout details --------------------------------------------------------------------------


def test_permutation_matches_llama_cpp_and_transformers_undoes_it():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of 4 rows
    p = permute_qk(w, 2, 2)
    # per head, rows [0, 1, 2, 3] (two rotary halves) become [0, 2, 1, 3] (interleaved pairs)
    assert p[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]
    undone = p.reshape(2, 2, 2, 3).swapaxes(2, 1).reshape(8, 3)  # transformers' reverse permute
    assert np.array_equal(undone, w)


def test_tensor_types_follow_the_converter():
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q8_0").name == "F32"
    assert tensor_type("blk.0.attn_q.bias", (64,), "f16").name == "F32"
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "f16").name == "F16"
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "q8_0").name == "Q8_0"
    assert tensor_type("blk.0.ffn_down.weight", (64, 48), "q8_0").name == "F16"  # 48 is not whole 32-blocks


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    plain = dict(byte_level, use_regex=False)

    def split(regex):
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}, plain]}

    assert pre_tokenizer_name(byte_level) == "gpt-2"
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}) == "smollm"
    assert pre_tokenizer_name(split(LLAMA3_SPLIT)) == "llama-bpe"
    assert pre_tokenizer_name(split(QWEN2_SPLIT)) == "qwen2"
    assert pre_tokenizer_name(split(r"\s+")) is None
    assert pre_tokenizer_name(dict(byte_level, add_prefix_space=True)) is None
    assert pre_tokenizer_name({"type": "Metaspace"}) is None and pre_tokenizer_name(None) is None


# --- what cannot be exported -----------------------------------------------------------------


def test_cli_unsupported_architecture_names_it_and_the_way_out(ship):
    result = cli("export", ship["runs"]["gpt2"], "-p", ship["root"])
    assert result.exit_code == 2
    assert ("error: cannot export GPT2LMHeadModel to GGUF: the architecture GPT2LMHeadModel is not supported "
            "(supported: LlamaForCausalLM (Llama, SmolLM2), MistralForCausalLM, Qwen2ForCausalLM)") in result.stderr
    assert "hint: merge the run with `tunesmith merge RUN -o DIR`" in result.stderr
    assert "convert_hf_to_gguf.py" in result.stderr


def test_layouts_it_cannot_write():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    rope = LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       architectures=["LlamaForCausalLM"])
    rope.rope_parameters = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    with pytest.raises(ExportError, match="cannot export LlamaForCausalLM to GGUF: rope scaling 'llama3' is not"):
        check_exportable(rope)
    bias = LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       attention_bias=True, architectures=["LlamaForCausalLM"])
    with pytest.raises(ExportError, match="attention or MLP biases in a Llama-layout model are not supported"):
        check_exportable(bias)
    sliding = Qwen2Config(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          use_sliding_window=True, sliding_window=32, architectures=["Qwen2ForCausalLM"])
    with pytest.raises(ExportError, match="cannot export Qwen2ForCausalLM to GGUF: sliding-window attention"):
        check_exportable(sliding)
    mistral = MistralConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=4096, sliding_window=1024,
                            architectures=["MistralForCausalLM"])
    plan = check_exportable(mistral)
    assert plan.gguf_arch == "llama" and plan.context_length == 1024 and "sliding window" in plan.notes[0]


def test_tokenizers_it_cannot_write():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = build_tiny_tokenizer("chatml")
    n = len(tok)
    with pytest.raises(ExportError, match="its pre-tokenizer is not one llama.cpp knows by name"):
        meta = build_tiny_tokenizer("chatml")
        meta.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        vocab_spec(meta, n)
    with pytest.raises(ExportError, match="its Lowercase normalizer has no llama.cpp equivalent"):
        lower = build_tiny_tokenizer("chatml")
        lower.backend_tokenizer.normalizer = normalizers.Lowercase()
        vocab_spec(lower, n)
    with pytest.raises(ExportError, match=f"it has token ids up to {n - 1} but the model has only 100 embeddings"):
        vocab_spec(tok, 100)
    spm = Tokenizer(models.BPE(vocab={"<unk>": 0, "a": 1, "b": 2, "ab": 3}, merges=[("a", "b")],
                               unk_token="<unk>", byte_fallback=True))
    with pytest.raises(ExportError, match="cannot export this tokenizer to GGUF: it is a SentencePiece-style BPE"):
        vocab_spec(PreTrainedTokenizerFast(tokenizer_object=spm), 4)
    with pytest.raises(ExportError, match="it has no tokenizer.json"):
        vocab_spec(object(), 4)
    spec = vocab_spec(tok, n + 2)
    assert spec.pre == "gpt-2" and spec.tokens[-1] == f"[PAD{n + 1}]" and spec.special_ids["eos"] == tok.eos_token_id


def test_a_tensor_without_a_llama_cpp_name_is_refused(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(build_tiny_tokenizer("chatml")), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(config)
    model.register_parameter("extra_scale", torch.nn.Parameter(torch.ones(3)))
    with pytest.raises(ExportError, match="its tensor extra_scale has no llama.cpp name"):
        write_gguf(model, check_exportable(config), vocab_spec(build_tiny_tokenizer("chatml"), config.vocab_size),
                   tmp_path / "x.gguf", "f16", name="x")


def test_cli_export_argument_errors(ship, tmp_path):
    run, root = ship["runs"]["lora"], ship["root"]
    result = cli("export", run, "-p", root, "--format", "onnx")
    assert result.exit_code == 2 and "--format 'onnx' is not an export format" in result.stderr
    result = cli("export", run, "-p", root, "--quant", "q4_k")
    assert result.exit_code == 2 and "--quant 'q4_k' is not supported" in result.stderr
    result = cli("export", run, "-p", root, "-o", tmp_path / "model.bin")
    assert result.exit_code == 2 and "a GGUF file name must end in .gguf" in result.stderr
    (tmp_path / "d.gguf").mkdir()
    result = cli("export", run, "-p", root, "-o", tmp_path / "d.gguf")
    assert result.exit_code == 2 and "is a directory" in result.stderr
    result = cli("export", run, "-p", root, "--verify-n", "-3")
    assert result.exit_code == 2 and "--verify-n must be 0 or more" in result.stderr


def test_export_mismatch_fails_and_writes_nothing(ship, tmp_path, monkeypatch):
    import tunesmith.ship.gguf_export as export_mod
    from tunesmith.ship.merge import Verification

    def differing(trained, exported, items, computed_on):
        return Verification("GGUF tokenizer + chat template vs the run's", len(items), 0,
                            [it.id for it in items], computed_on)

    monkeypatch.setattr(export_mod, "compare_templates", differing)
    result = cli("export", ship["runs"]["lora"], "-p", ship["root"], "-o", tmp_path / "m.gguf", "--verify-n", "2")
    assert result.exit_code == 2
    assert "error: template token ids: 0/2 identical (GGUF tokenizer + chat template vs the run's); they differ on test:" \
        in result.stderr
    assert "--allow-mismatch" in result.stderr and list(tmp_path.iterdir()) == []


def test_export_refuses_an_existing_file_unless_forced_or_an_earlier_export(ship, tmp_path):
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"precious")
    result = cli("export", ship["runs"]["lora"], "-p", ship["root"], "-o", mine, "--verify-n", "0")
    assert result.exit_code == 2 and "exists and is not an earlier tunesmith export" in result.stderr
    assert mine.read_bytes() == b"precious"
    result = cli("export", ship["runs"]["lora"], "-p", ship["root"], "-o", mine, "--verify-n", "0", "--force")
    assert result.exit_code == 0, result.output
    assert mine.read_bytes()[:4] == b"GGUF"
    # an earlier export (its record next to it) is simply replaced
    result = cli("export", ship["runs"]["lora"], "-p", ship["root"], "-o", mine, "--verify-n", "0")
    assert result.exit_code == 0, result.output
