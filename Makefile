# Two commands run everything on a fresh machine (see README.md):
#   make demo   - the main job on the embedded default model and the example project
#   make test   - the test suite
VENV ?= .venv
TS := $(VENV)/bin/tunesmith
PROJECT ?= examples/pyfunc-json

.PHONY: setup demo demo-data test test-newest test-heavy test-llamacpp bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(TS) models resolve builtin:smollm2-135m-instruct
	$(TS) run $(PROJECT)

demo-data: setup
	$(TS) split --project $(PROJECT)
	$(TS) split --project $(PROJECT) --verify
	$(TS) check $(PROJECT)/data/train.jsonl --project $(PROJECT)

test: setup
	@bash scripts/install-browser.sh
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

test-newest:
	@bash scripts/test-newest.sh

# The tests marked heavy (minutes each on 2 cores): QLoRA train, kill -9, resume, merge, eval and serve on the
# real SmolLM2 (the default run covers that path on a tiny model), and scripts/device-check.sh on the CPU.
test-heavy: setup
	TUNESMITH_HEAVY_TESTS=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider -m heavy -rs

# Optional: llama.cpp through llama-cpp-python (source only on the index: about 12 minutes to build on
# 2 cores), then the check that llama.cpp itself reads an export as the merged model does.
test-llamacpp: setup
	$(VENV)/bin/python -m pip install --quiet -e ".[llamacpp]"
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/ship/test_llamacpp.py tests/inference/test_llamacpp_backend.py -rs

bench: setup
	$(VENV)/bin/python benchmarks/check_scale.py

clean:
	rm -rf $(PROJECT)/data $(PROJECT)/data.jsonl $(PROJECT)/schema.json $(PROJECT)/regression.jsonl
