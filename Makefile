# One virtual environment, installed from pyproject.toml and pinned by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	touch $@

## The demo line: prepares the demo model on first run, then a camera replays ELPV cells into the inspector.
demo: setup
	$(BIN)/edge-inspect demo $(ARGS)

## The test suite (CPU only; Triton kernels run through the interpreter).
test: setup
	$(BIN)/python -m pytest $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/pipeline.py $(ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
