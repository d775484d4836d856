# The two commands of the README: `make run` (demo on embedded defaults) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pingan-installed
CONFIG ?= cameras.yaml

.PHONY: run test test-all check lint typecheck bench system clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plates]'
	@touch $@

system:
	@bash scripts/setup-system.sh

run: system $(STAMP)
	$(VENV)/bin/pingan demo --config $(CONFIG)

test: system $(STAMP)
	$(VENV)/bin/pytest -q

test-all: system $(STAMP)
	$(VENV)/bin/pytest -q --run-slow

check: lint typecheck

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline api tests benchmarks models
	$(VENV)/bin/ruff format --check pipeline api tests benchmarks models

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: system $(STAMP)
	$(VENV)/bin/pingan bench all

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
