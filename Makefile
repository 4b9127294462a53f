# `make test`: set up .venv (torch, optuna, ...), then run every test. `make search`: the default 100-trial study.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: test quick search system-deps lint

test: $(VENV)/.installed
	$(BIN)/pytest

quick: $(VENV)/.installed  ## the fast tests only (no real MNIST runs, processes, servers or browser)
	$(BIN)/pytest -m "not slow"

search: $(VENV)/.installed
	$(BIN)/lrsearch start --trials 100

lint: $(VENV)/.installed
	$(BIN)/ruff check search objectives tests benchmarks
	$(BIN)/ruff format --check search objectives tests benchmarks
	$(BIN)/mypy
	PYTHONPATH=search:objectives $(BIN)/lint-imports --no-cache

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

# Debian packages for the browser and docker-compose tests (needs root; those tests skip without them).
system-deps:
	apt-get update -q
	apt-get install -y -q chromium chromium-driver docker-compose
