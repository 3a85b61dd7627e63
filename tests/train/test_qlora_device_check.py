"""scripts/device-check.sh, everything of it a CPU can run: QLoRA and LoRA, a kill -9 and resume, merges
verified against the adapters, an eval, and one server with both adapters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.heavy
def test_device_check_runs_on_cpu(tmp_path, tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "check.json"
    done = subprocess.run([str(ROOT / "scripts" / "device-check.sh"), "--quick", "--model", str(tiny_model_dir),
                           "--json", str(out)], env={**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["failures"] == []
    assert results["qlora"]["resumed_from_step"] is not None  # killed with SIGKILL, then resumed
    for method in ("qlora", "lora"):
        assert results[method]["trained_tokens_per_s"] > 0
        agreed, total = results[method]["merged_agrees"].split("/")
        assert agreed == total and int(total) > 0
    assert results["serve"] == {"qlora": "ok", "lora": "ok"}
    assert "merged == adapter greedy: " in done.stdout and "tokens/s" in done.stdout
