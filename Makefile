# Quick start:  make run   (set up, then the default experiment)   |   make test   (set up, then the whole suite)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build from this machine's local disk. On a GPU machine: make install TORCH=torch
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_WORKERS ?= 2

.PHONY: install install-dev run test test-fast lint format typecheck bench clean

# What a run needs (torch, Lightning, transformers, ...): all `make run` installs.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e . "$(TORCH)"
	touch $@

# The dev extra on top (pytest, ruff, mypy, and what the suite tests against: DeepSpeed, bitsandbytes, TRL, ...).
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH)"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(PY) -m rlhf_lab $(ARGS)

# The whole suite, slow end-to-end training tests included (what CI runs).
test: install-dev
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(ARGS)

# Inner loop: everything but the slow and multi-process tests.
test-fast: install-dev
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow and not multiprocess" $(ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: install-dev
	$(VENV)/bin/mypy

bench: install-dev
	$(PY) -m pip install -q -e ".[bench]" "$(TORCH)"
	$(PY) benchmarks/losses_vs_trl.py
	$(PY) benchmarks/logps_memory.py
	$(PY) benchmarks/kd_memory.py
	$(PY) benchmarks/dpo_vs_trl.py
	$(PY) benchmarks/online_vs_trl.py
	$(PY) benchmarks/generation_vs_hf.py
	$(PY) benchmarks/decoder_levers.py
	$(PY) benchmarks/startup.py --repo .
	$(PY) benchmarks/memory_estimate.py --models tiny mid

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache .mypy_cache
