# The two commands that matter: `make run` (set up and start Parley) and `make test` (set up and test).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two test processes halve the suite's wall time (it mostly waits on real time); PYTEST_WORKERS=0 runs it in one.
PYTEST_WORKERS ?= 2
HOST ?= 127.0.0.1
PORT ?= 8080
# Debian packages: libopus0 for the codec; for the tests chromium and firefox-esr (browsers), pulseaudio
# and pulseaudio-utils (Firefox's virtual microphone: tests/browser/firefox.py), redis-server (scale-out),
# coturn (TURN relay), iproute2 and iptables (network namespaces with impaired links), postgresql (call
# records on a real PostgreSQL, a throwaway cluster per test module: tests/postgres.py).
RUN_PACKAGES := libopus0
TEST_PACKAGES := libopus0 redis-server chromium firefox-esr pulseaudio pulseaudio-utils coturn iproute2 iptables \
	postgresql

.PHONY: run test lint typecheck pytest bench soak system-deps test-system-deps clean

run: $(VENV)/.installed
	$(BIN)/parley serve --host $(HOST) --port $(PORT)

test: test-system-deps $(VENV)/.dev-installed lint typecheck pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

pytest: $(VENV)/.dev-installed
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --durations=15 $(PYTEST_ARGS)

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

soak: $(VENV)/.dev-installed
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

system-deps:
	@./.ci/apt-install $(RUN_PACKAGES)

test-system-deps:
	@./.ci/apt-install $(TEST_PACKAGES)

$(VENV)/.installed: pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.bench-installed: pyproject.toml $(VENV)/.dev-installed
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
