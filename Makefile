# Two commands for a newcomer: `make demo` and `make test`. Both create .venv if needed and install
# the package with the pinned versions in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY = true
export DO_NOT_TRACK = true
export RAY_USAGE_STATS_ENABLED = 0
export GX_ANALYTICS_ENABLED = false
export FEAST_USAGE = False

.PHONY: install demo test test-fast test-unit test-integration test-dags test-system lint typecheck bench clean-demo

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m ruff check src dags example_dags tests scripts benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration and not dags and not system"

# the suite in parts (together: `make test`, ~30 min on 2 cores)
test-unit: test-fast

test-integration: $(STAMP)
	$(PY) -m pytest -m integration

test-dags: $(STAMP)
	$(PY) -m pytest -m dags

# The stack's parts as real processes (PostgreSQL and Redis must run: see .ci/run; ~4 min)
test-system: $(STAMP)
	$(PY) -m pytest -m system tests/system

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(PY) -m ruff check src dags example_dags tests scripts benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy

clean-demo:
	rm -rf .demo
