# tidings — every command a newcomer needs. Each target bootstraps .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install run test lint typecheck types bench soak hold clean

install: $(BIN)/tidings

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(BIN)/tidings: $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

$(VENV)/.dev-installed: $(BIN)/tidings requirements-dev.lock
	$(BIN)/pip install --quiet -r requirements-dev.lock
	@touch $@

run: install
	$(BIN)/tidings serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/mypy $(wildcard bench/*.py)

# Node's ws client (bench/node's pinned packages) is one of the test suite's clients, and
# TypeScript (tests/ts's) type-checks a sample app against tidings.d.ts. Branch coverage
# of src/tidings; tests/coverage_floor.py holds the floors (90 % for the package, 100 %
# for each pure module it lists).
test: lint $(if $(shell command -v npm),bench/node/node_modules tests/ts/node_modules)
	rm -f .coverage .coverage.*
	$(BIN)/pytest --cov --cov-report=term $(PYTEST_ARGS)
	$(BIN)/python tests/coverage_floor.py

# The chaos suite's full variant (tests/chaos.py; `make test` runs the fast one): its own
# redis-server and PostgreSQL cluster (initdb from TIDINGS_PG_BIN, default
# /usr/lib/postgresql/15/bin), two `tidings serve` nodes, 200 clients, 10,000 durable
# events under faults; under 10 minutes, loopback only. Prints a table and a JSON line;
# fails unless nothing was lost, duplicated, reordered or leaked. SOAK_ARGS: --seed N, --keep.
soak: $(VENV)/.dev-installed
	$(BIN)/python -m tests.chaos $(SOAK_ARGS)

# Load held, nothing leaking (tests/held.py; `make test` runs the fast variant): one
# `tidings serve` node on CPU 0, 5,000 clients on CPU 1 held 420 s under heartbeats, pings
# and a REST change every 0.5 s; RSS every second (KiB per connection, growth per hour
# over the last 120 s). After every client leaves, tasks, connections, subscriptions,
# channels, presence and open files must be back at their baseline. About 8 minutes,
# loopback only. Prints a table and a JSON line.
# HOLD_ARGS: --clients N, --hold S, --window S, --samples, --env TIDINGS_X=V, --keep.
hold: $(VENV)/.dev-installed
	$(BIN)/python -m tests.held $(HOLD_ARGS)

bench/node/node_modules: bench/node/package-lock.json
	cd bench/node && npm ci --no-audit --no-fund --silent
	@touch $@

tests/ts/node_modules: tests/ts/package-lock.json
	cd tests/ts && npm ci --no-audit --no-fund --silent
	@touch $@

# Rewrite the generated part of tidings.d.ts from the message schema (tidings/schema.py).
types: $(BIN)/tidings
	$(BIN)/python -m tidings.typescript

bench: $(VENV)/.dev-installed bench/node/node_modules
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .coverage.* build src/*.egg-info bench/node/node_modules tests/ts/node_modules
