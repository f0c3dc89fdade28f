# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Both create .venv and install the project with the CPU constraints on first use.
# The interpreter: PYTHON if given, else the first of python3.11 ... python3.14, python3 found on PATH
# (the pinned stack resolves with binary wheels on 3.11-3.14; this machine and CI have 3.11).
PYTHON ?= $(firstword $(foreach p,python3.11 python3.12 python3.13 python3.14 python3,$(shell command -v $(p) 2>/dev/null)))
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
# Machines without a local CPU torch wheel: TORCH_INDEX=<PyTorch's CPU (or CUDA) wheel index URL>
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.ganpipe-installed
# the local S3 store of `ganpipe services up` (s3rver from npm, versions locked in package-lock.json)
S3STORE := infra/s3store
S3STAMP := $(S3STORE)/node_modules/.ganpipe-installed

.PHONY: install run test bench repro clean-home browser

# the browser test drives Debian's chromium with its chromedriver (Selenium Manager would download
# its own, which no offline machine can); installed once, as root or through sudo
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "no python3.11+ on PATH: install one or run make PYTHON=/path/to/python3.x" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(PYTHON) is older than 3.11, which ganpipe needs (make PYTHON=...)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --index-url $(TORCH_INDEX) torch==2.13.0)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $@

# Node.js from Debian where the machine has none (as root or through sudo), then the locked packages
$(S3STAMP): $(S3STORE)/package.json $(S3STORE)/package-lock.json
	@command -v npm >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; }
	npm ci --omit=dev --no-audit --no-fund --prefix $(S3STORE)
	touch $@

install: $(STAMP) $(S3STAMP)

run: $(STAMP)
	$(BIN)/ganpipe run $(ARGS)

test: $(STAMP) $(S3STAMP) browser
	@$(BIN)/python -c 'import platform, sys; print("tests on Python", platform.python_version(), "at", sys.executable)'
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the dvc.yaml stages without Prefect; their cmds call `ganpipe`, so the venv goes on PATH
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# every benchmark in one run, one combined report (benchmarks/results/bench.md); ARGS=--quick: seconds, to check.
# PYTHONPATH: this checkout's code, in `ganpipe run` and Ray's workers too, whichever checkout .venv was installed from
bench: $(STAMP) $(S3STAMP)
	PYTHONPATH="$(CURDIR)" $(BIN)/python benchmarks/all.py $(ARGS)

clean-home:
	rm -rf .ganpipe
