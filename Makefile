# flowq developer commands. On a fresh machine: `make demo`, then `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_MODE ?= quick

.DEFAULT_GOAL := install
.PHONY: install demo test check lint format types bench

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes: the editable install picks up code edits by itself.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -e '.[dev]'
	touch $@

demo: install
	$(BIN)/flowq run examples/order_processing.yaml --var order_id=42 --var sku=WIDGET-1 --var quantity=2
	$(BIN)/python -m examples.show_order 42

# The demo's inventory: a SQLite file here, unless FLOWQ_CONN_SHOP names another database.
demo: export FLOWQ_CONN_SHOP ?= sqlite:///shop.db

test: install
	$(BIN)/pytest -q

check: lint types test

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

types: install
	$(BIN)/mypy

bench: install
	BENCH_MODE=$(BENCH_MODE) $(BIN)/python -m bench
