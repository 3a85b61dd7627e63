"""More GGUF precisions through gguf.quants: each file loads back, and its greedy agreement is reported."""

import json

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.ship.gguf_quant import fallback_note, tensor_type

runner = CliRunner()


def export(ship, tmp_path, quant, n=2):
    result = runner.invoke(app, ["export", ship["runs"]["lora"], "-p", str(ship["root"]), "--json", "--quant", quant,
                                 "--verify-n", str(n), "-o", str(tmp_path / f"m-{quant}.gguf")])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("quant,ggml", [("q4_0", "Q4_0"), ("q5_0", "Q5_0")])
def test_lossy_block_quants_load_back_and_report_agreement(ship, tmp_path, quant, ggml):
    from gguf import GGUFReader

    out = export(ship, tmp_path, quant)
    assert out["template"]["identical"] == 2 and out["outputs"]["total"] == 2  # k/2 agree: reported, not failed
    assert out["tensors"][ggml] > 0 and out["size_bytes"] == (tmp_path / f"m-{quant}.gguf").stat().st_size
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / f"m-{quant}.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == ggml and types["blk.0.attn_norm.weight"] == "F32"


def test_bf16_is_exact_and_smaller_than_f32(ship, tmp_path):
    bf16 = export(ship, tmp_path, "bf16")
    assert bf16["outputs"]["identical"] == 2 and bf16["tensors"]["BF16"] > 0
    assert "at bf16" in bf16["outputs"]["what"]
    f32 = export(ship, tmp_path, "f32", n=0)
    assert f32["tensors"] == {"F32": sum(bf16["tensors"].values())} and f32["size_bytes"] > 1.8 * bf16["size_bytes"]


def test_rows_that_are_not_whole_blocks_stay_f16_and_are_named():
    assert tensor_type("blk.0.ffn_down.weight", (64, 48), "q4_0").name == "F16"
    assert tensor_type("blk.0.ffn_down.weight", (64, 64), "q5_0").name == "Q5_0"
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "bf16").name == "BF16"
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q4_0").name == "F32"
    assert fallback_note("q4_0", ["a", "b", "c", "d", "e"]) == (
        "5 tensor(s) stay F16 because their rows are not a multiple of 32 values (q4_0's block): a, b, c, d and 1 more")
    assert fallback_note("q4_0", []) is None


def test_quant_errors(ship):
    run, root = ship["runs"]["lora"], str(ship["root"])
    result = runner.invoke(app, ["export", run, "-p", root, "--quant", "q4_k"])
    assert result.exit_code == 2 and "--quant 'q4_k' is not supported" in result.stderr
    assert "q5_0 or q4_0" in result.stderr
    result = runner.invoke(app, ["export", run, "-p", root, "--format", "lora-gguf", "--quant", "q4_0"])
    assert result.exit_code == 2
    assert "error: --quant q4_0 is not available for --format lora-gguf" in result.stderr
    assert "use --quant f16, bf16 or f32" in result.stderr
