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

# The whole suite against the lowest release of every dependency that pyproject.toml allows
# (the library's own and its redis, images, s3 and gcs extras'; CI runs it). The test tools stay at
# their newest and are never allowed to move those pins.
LOWEST := .venv-lowest
UV := $(LOWEST)/bin/uv pip
$(LOWEST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --disable-pip-version-check uv
	$(UV) install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -e ".[redis,images,s3,gcs]"
	$(UV) freeze --python $(LOWEST)/bin/python --exclude-editable > $(LOWEST)/lowest.txt
	$(UV) install --quiet --python $(LOWEST)/bin/python -e ".[test,redis,images,s3,gcs]" -c $(LOWEST)/lowest.txt
	touch $@

test-lowest: $(LOWEST)/.installed
	$(UV) freeze --python $(LOWEST)/bin/python | grep -iE '^(aiohttp|anyio|pyjwt|redis|pillow|fsspec|s3fs|gcsfs)=='
	$(LOWEST)/bin/python -m pytest -p no:cacheprovider

# The benchmark of this SDK against hand-written peers (several minutes); rewrites the
# results in benchmarks/ (results.json, results.md, results.png, README.md's table).
.PHONY: bench
bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BIN)/python benchmarks/bench.py --readme

clean:
	rm -rf $(VENV) $(LOWEST) .mypy_cache .pytest_cache .ruff_cache *.egg-info
