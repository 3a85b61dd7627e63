"""`tunesmith export --format lora-gguf`: llama.cpp's LoRA adapter layout, read back with GGUFReader."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.errors import ExportError
from tunesmith.ship.gguf_adapter import lora_pairs, peft_scale
from tunesmith.ship.gguf_export import permute_qk

runner = CliRunner()


def read(path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
               for t in reader.tensors}
    return fields, tensors


def test_adapter_gguf_reproduces_the_merged_weights(ship, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = runner.invoke(app, ["export", ship["runs"]["lora"], "-p", str(ship["root"]), "--format", "lora-gguf",
                                 "--quant", "f32", "--json", "-o", str(tmp_path / "a.gguf")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["format"] == "lora-gguf" and out["adapter"]["alpha"] == 16.0 and out["adapter"]["ranks"] == [8]
    fields, tensors = read(tmp_path / "a.gguf")
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0 and fields["general.architecture"] == "llama"
    assert "tokenizer.ggml.tokens" not in fields
    base = AutoModelForCausalLM.from_pretrained(str(ship["base"]), dtype=torch.float32)
    config = base.config
    base_sd = {k: v.numpy().copy() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, str(ship["adapter"])).merge_and_unload().state_dict()
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    checked = 0
    for layer in range(config.num_hidden_layers):
        for hf, gg in names.items():
            key = f"model.layers.{layer}.{hf}.weight"
            a, b = tensors[f"blk.{layer}.{gg}.weight.lora_a"], tensors[f"blk.{layer}.{gg}.weight.lora_b"]
            assert a.shape == (8, base_sd[key].shape[1]) and b.shape == (base_sd[key].shape[0], 8)
            want, start = merged[key].numpy(), base_sd[key]
            if gg in ("attn_q", "attn_k"):  # llama.cpp's rotary layout, as in the model GGUF
                heads = config.num_attention_heads if gg == "attn_q" else config.num_key_value_heads
                want = permute_qk(want, config.num_attention_heads, heads)
                start = permute_qk(start, config.num_attention_heads, heads)
            np.testing.assert_allclose(start + (b @ a) * 16.0 / 8, want, atol=1e-5)
            checked += 1
    assert checked == 14 and len(tensors) == 28


def test_peft_scales_other_than_alpha_over_rank():
    assert peft_scale({"lora_alpha": 16}, "model.layers.0.self_attn.q_proj.weight", 8) == 2.0
    assert peft_scale({"lora_alpha": 16, "use_rslora": True}, "x.q_proj.weight", 16) == 4.0
    pattern = {"lora_alpha": 16, "alpha_pattern": {"v_proj": 32}}
    assert peft_scale(pattern, "model.layers.0.self_attn.v_proj.weight", 8) == 4.0
    assert peft_scale(pattern, "model.layers.0.self_attn.q_proj.weight", 8) == 2.0


def test_adapter_errors(ship, tmp_path):
    root = str(ship["root"])
    result = runner.invoke(app, ["export", ship["runs"]["gqa"], "-p", root, "--format", "lora-gguf"])
    assert result.exit_code == 2
    assert f"error: run {ship['runs']['gqa']} is a full fine-tune: it has no LoRA adapter to export" in result.stderr
    assert "--format gguf" in result.stderr
    with pytest.raises(ExportError) as exc:
        lora_pairs({"base_model.model.model.embed_tokens.weight": torch.zeros(2)}, tmp_path)
    assert exc.value.message == (f"cannot export this adapter to GGUF: {tmp_path}/adapter_model.safetensors holds "
                                 "base_model.model.model.embed_tokens.weight, which is not a LoRA pair on a linear "
                                 "layer (a module saved whole, or LoRA on embeddings)")
    dora = tmp_path / "dora"
    shutil.copytree(ship["adapter"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    from tunesmith.ship.gguf_adapter import read_adapter

    with pytest.raises(ExportError, match="use_dora is true; llama.cpp applies plain LoRA only"):
        read_adapter(dora)
    (dora / "adapter_model.safetensors").unlink()
    with pytest.raises(ExportError, match="has no adapter_model.safetensors"):
        read_adapter(dora)
