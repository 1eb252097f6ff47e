# One virtual environment, installed from pyproject.toml and pinned by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup demo test test-peers lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	touch $@

## The demo line: prepares the demo model on first run, then a camera replays ELPV cells into the inspector.
demo: setup
	$(BIN)/edge-inspect demo $(ARGS)

## The real peers the output tests start on loopback (docs/outputs.md): Debian's mosquitto broker.
## Installed only when missing, which needs root (CI: a fresh Debian machine running `make test` as root).
test-peers:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
		if [ "$$(id -u)" -ne 0 ]; then echo "mosquitto is missing: run make test-peers as root" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

## The test suite (CPU only; Triton kernels run through the interpreter).
test: setup test-peers
	$(BIN)/python -m pytest $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/pipeline.py $(ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
