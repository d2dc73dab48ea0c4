# One entry point for every routine task. Each target brings .venv up to date itself,
# so on a fresh Debian machine with Python 3.11 `make up` and `make test` do all set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: up test check lint types bench dist clean venv fmt system-packages

# Every package at the version constraints.txt pins (scripts/lock regenerates it), so CI
# and every developer test the same releases the Docker image ships.
# Debian's python3 keeps venv's ensurepip in python3-venv, which a fresh machine may lack
# (then `python3 -m venv` leaves a venv without pip: made again with --clear).
$(STAMP): pyproject.toml hatch_build.py constraints.txt
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || scripts/system-packages --need python3-venv
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(BIN)/opsq up --demo

# Debian packages the tests use (promtool, chromium, nginx, ...): installed when missing.
system-packages:
	scripts/system-packages tests/system-packages.txt

test: $(STAMP) system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

# -E puts the zipapp's packages on PYTHONPATH so `opsq.pyz up` can start its children
# (`python -m celery ...`) with the same code; --version shows the stamped commit.
# async-timeout: redis-py needs it below Python 3.11.3 (Debian 12's python3 is 3.11.2), and
# pip leaves it out when the build interpreter is newer.
dist: $(STAMP)
	rm -rf dist && $(BIN)/python -m pip wheel --quiet --no-deps -w dist .
	$(BIN)/shiv -q -E -o dist/opsq.pyz -c opsq -p '/usr/bin/env python3' dist/opsq-*.whl async-timeout

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
