# Two commands for a fresh clone: `make demo` (the main job end to end) and `make test` (what CI runs);
# `make test-fast` leaves out the end-to-end (integration) and slow tests, for the edit-test loop.
# Each creates the virtual environment on first use: CPU torch 2.13.0, then jbot with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.jbot-installed
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
# pip compiles the bytecode at install (its default; keep it): where PYTHONDONTWRITEBYTECODE is set, as on CI, an
# uncompiled torch and MLflow cost every jbot process some 15 s of compiling at import.
DEMO_DIR ?= data/demo
DEMO_JETS ?= 2000

.PHONY: setup demo test test-fast lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[generate,export,jetclass,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/jbot demo --out $(DEMO_DIR) --jets-per-class $(DEMO_JETS) --workers 2

# every test but those that need a CUDA device (slow and integration ones included)
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not slow and not integration"

lint: $(STAMP)
	$(BIN)/ruff check jbot tests benchmarks
	$(BIN)/mypy jbot

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
