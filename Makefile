# Two commands do everything on a fresh machine (see README):
#   make demo   set up, then run `reef-forensics demo`: train small models, register them in a
#               local MLflow store, fingerprint and screen them, verify the signed reports
#   make test   set up, then lint (ruff), type-check (mypy) and run the test suite (pytest)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DIR ?= demo-output

.PHONY: setup demo quickstart test lint typecheck pytest bench clean

setup: $(STAMP)

# torch is installed first and pinned: `torch==2.13.0` is a small CPU wheel on this project's
# machines, while a bare `torch` requirement would pull a 5.5 GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet 'torch==2.13.0'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/reef-forensics demo --dir $(DEMO_DIR)

# The command-line walkthrough (examples/quickstart.sh): each CLI command, one after another.
quickstart: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash examples/quickstart.sh quickstart-output

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# -n 3 --dist loadfile: three processes, each test file in one of them (a file's tests share its
# servers and run in their order); `$(BIN)/python -m pytest -q tests/test_x.py` runs one file
# PYTEST_ARGS=--long also runs the long fault, load and kill runs (CI does)
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_cka.py
	$(BIN)/python bench/bench_extraction.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) quickstart-output .pytest_cache .mypy_cache .ruff_cache *.egg-info
