# Everything a fresh machine with Python 3.11+ and make needs: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-lowest lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files re-install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[demo]"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,demo]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/python -m pytest

test: lint typecheck unit

# The long fault-injection and crash runs (minutes); CI runs them after `make test`.
test-slow: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m slow

# The client's tests against the lowest aiohttp that pyproject.toml allows (CI runs it).
AIOHTTP_LOWEST := $(shell sed -n 's/.*"aiohttp>=\([0-9.]*\),.*/\1/p' pyproject.toml)
LOWEST := .venv-lowest
$(LOWEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" "aiohttp==$(AIOHTTP_LOWEST).*"
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check "aiohttp==$(AIOHTTP_LOWEST).0"
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -c "import aiohttp; print('aiohttp', aiohttp.__version__)"
	$(LOWEST)/bin/python -m pytest -p no:cacheprovider tests/client

# The benchmark of this SDK against hand-written peers (several minutes); rewrites the
# results in benchmarks/ (results.json, results.md, results.png, README.md's table).
.PHONY: bench
bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BIN)/python benchmarks/bench.py --readme

clean:
	rm -rf $(VENV) $(LOWEST) .mypy_cache .pytest_cache .ruff_cache *.egg-info
