#!/usr/bin/env bash
# The checks for the day an accelerator is lent, offline, with only this repository and its wheels:
# QLoRA and LoRA on the embedded model (bf16 where the device has it), a kill -9 and resume, merges
# verified against the adapters, an eval, and serve with both adapters. Prints tokens/s, peak GPU memory
# and whether merged and adapter greedy outputs agree; exits 1 on any failure or past 8 minutes.
#   scripts/device-check.sh [--quick] [--model DIR] [--json FILE]
#   DEVICE=cpu scripts/device-check.sh --quick    # everything a CPU can run (the tests do this)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if [ "${DEVICE:-}" = "cpu" ]; then
  export CUDA_VISIBLE_DEVICES=""
fi
"$PY" -c "import bitsandbytes" 2>/dev/null \
  || { echo "bitsandbytes is not installed (QLoRA needs it): pip install 'bitsandbytes>=0.50.0'" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" scripts/device_check.py "$@"
