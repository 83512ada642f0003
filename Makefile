# Two commands for a fresh machine: `make demo` (install + train + evaluate on the embedded
# digits data) and `make test` (install + the test suite). torch==2.13.0 is installed first so
# that pip never resolves a bare `torch` requirement to the multi-GB CUDA build.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install install-test demo test lint bench

install:
	$(PIP) torch==2.13.0
	$(PIP) -e .

# The report test renders the HTML page in headless Chromium; Debian's package is installed where
# apt is available (CI runs as root), otherwise that one test is skipped.
install-test: install
	$(PIP) -e ".[test]"
	@command -v chromium >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "warning: chromium could not be installed (no apt or not root); the headless report test will be skipped"

demo: install
	$(PYTHON) -m selfsup pretrain configs/demo.yaml run.name=demo --force
	$(PYTHON) -m selfsup eval knn runs/demo --baseline

test: install-test
	$(PYTHON) -m pytest -q

lint: install-test
	$(PYTHON) -m ruff check src tests benchmarks

bench: install
	$(PYTHON) benchmarks/throughput.py
