# Two entry points for a fresh clone: `make serve` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test install system-deps bench

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Debian packages for the tests: Chromium (browser tests) and Fashion-MNIST (the default model's data).
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium dataset-fashion-mnist; \
	fi

serve: $(VENV)/.installed
	$(VENV)/bin/viscnn serve

test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) benchmarks/importance.py
