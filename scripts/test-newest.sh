#!/usr/bin/env bash
# The tests that lean on transformers internals (the batched decoder, the trainer's loss, GGUF
# conversion, merging), run against the newest transformers that pyproject.toml allows, in a
# venv of their own so that the everyday .venv keeps the release it was tested with. A CI job: it
# needs the package index.
#   scripts/test-newest.sh                       # inference, train, models and ship tests
#   scripts/test-newest.sh tests/inference -x    # or any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-build/venv-newest}  # build/ is ignored by git
bash scripts/setup.sh
py="$VENV/bin/python"
# the requirement as pyproject.toml states it (e.g. transformers<6,>=5.0), so the bound lives in one place
wanted=$("$py" -c 'from importlib.metadata import requires
print(next(r for r in requires("tunesmith") if r.startswith("transformers")))')
"$py" -m pip install --quiet --disable-pip-version-check --upgrade "$wanted"
echo "testing with transformers $("$py" -c 'import transformers; print(transformers.__version__)') ($wanted)"
if [ $# -eq 0 ]; then set -- tests/inference tests/train tests/models tests/ship; fi
exec "$py" -m pytest -q -p no:cacheprovider "$@"
