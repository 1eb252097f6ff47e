# One virtual environment, installed from pyproject.toml and pinned by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: setup demo test peers lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	touch $@

## The demo line: prepares the demo model on first run, then a camera replays ELPV cells into the inspector.
demo: setup
	$(BIN)/edge-inspect demo $(ARGS)

## The real peers the integration tests start on loopback, all from Debian's packages: mosquitto (MQTT),
## Aravis's fake GigE Vision camera, a GStreamer RTSP server, Chromium (the console's browser tests) and
## Prometheus (promtool and the alert test); then the camera extra (PyGObject, harvesters, GenTL), which
## builds against the GObject-introspection development files. Installing needs root (CI runs as root).
PEER_DEBS := mosquitto gir1.2-aravis-0.8 aravis-tools libgirepository1.0-dev libcairo2-dev pkg-config \
	gir1.2-gst-rtsp-server-1.0 gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-tools chromium prometheus

peers: $(VENV)/.peers

$(VENV)/.peers: $(VENV)/.installed
	@missing=$$(dpkg-query -W -f='$${db:Status-Abbrev} $${Package}\n' $(PEER_DEBS) 2>/dev/null \
		| awk '$$1 != "ii" {print $$2}'; for p in $(PEER_DEBS); do \
		dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done | sort -u); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -ne 0 ]; then echo "missing Debian packages: $$missing; run make peers as root" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all,cameras]"
	touch $@

## The test suite (CPU only; Triton kernels run through the interpreter).
test: setup peers
	$(BIN)/python -m pytest $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/pipeline.py $(ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
