# Two commands for a newcomer: `make dev` (start the gateway) and `make test` (run every test).
# Both create .venv from the pinned requirements first, if it is missing or out of date, with Python 3.13 or newer
# (PYTHON=/path/to/python3.13 to choose one), and install the package into it (`anthropic-gateway` on its PATH).

PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) $(shell command -v python3.13 2>/dev/null) python3)
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_CHROMIUM := /usr/bin/chromium
# The venv's bin first: `sam build` looks for python3.13 on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHONPATH := $(CURDIR)/layers/gateway

.PHONY: dev test bench lint venv chromium clean

venv: $(VENV)/.installed

# A venv made by an older Python (before this check existed) is made again.
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 13))'

$(VENV)/.installed: requirements-dev.txt layers/gateway/requirements.txt pyproject.toml
	@$(PYTHON) $(NEW_ENOUGH) 2>/dev/null || { \
		echo "The gateway needs Python 3.13 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo 'not found')." >&2; \
		echo "Install Python 3.13 (python.org, 'apt install python3.13', 'brew install python@3.13' or" >&2; \
		echo "'pyenv install 3.13'), then run make again, or name it: make dev PYTHON=/path/to/python3.13" >&2; \
		exit 1; }
	test -x $(BIN)/python && $(BIN)/python $(NEW_ENOUGH) || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --editable .
	touch $@

dev: venv
	$(BIN)/python -m anthropic_gateway serve

test: venv chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# The console's browser tests (tests/test_console.py) drive a Chromium through Playwright: $CHROMIUM when set,
# else Debian's /usr/bin/chromium, else one on PATH, else Playwright's own (`playwright install chromium`). Without
# any they are skipped, and pytest's summary says why. Debian's package is installed here only as root (like CI);
# anyone else is told how.
chromium:
	@if [ -n "$$CHROMIUM" ] || [ -x $(DEBIAN_CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
		echo "No Debian chromium, and not root: not installing it. The console's browser tests use \$$CHROMIUM," >&2; \
		echo "a chromium on PATH or Playwright's own, and are skipped (with the reason) when there is none:" >&2; \
		echo "run 'sudo apt-get install chromium', or set CHROMIUM=/path/to/chromium." >&2; \
		exit 0; \
	fi; \
	echo "Installing Debian's chromium for the console's browser tests (as root)."; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core

# The load generator is Debian's wrk (an epoll C client: it costs the shared cores little). Installed here like
# chromium above when missing. The bench raises its own open-file limit for 1,000 concurrent streams.
# BENCH_QUICK=1 make bench: a short run (knobs in bench/config.py); results also in .bench/results.json.
WRK := /usr/bin/wrk

bench: venv $(WRK)
	$(BIN)/python -m bench

$(WRK):
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make bench needs Debian's wrk: run 'sudo apt-get install wrk', or make bench as root." >&2; \
		exit 1; \
	fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk

# lint-imports: the package's layers and no import cycles (pyproject.toml's [tool.importlinter]).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .ruff_cache
