# kioskfleet — `make demo` runs the product, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# bytecode caches: without them every pytest worker compiles the whole tree again (measured:
# collection 12.5 s instead of 3.5 s per process where the environment forbids writing them)
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test lint typecheck unit system-deps clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kioskfleet needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/kioskfleet demo

system-deps:
	scripts/ensure-test-deps.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# pytest-xdist: the integration tests mostly wait (brokers, fleets, browsers), so more workers
# than CI's two cores pay; every test has its own broker and database, and a module whose tests
# share one expensive fixture keeps them on one worker (xdist_group, --dist loadgroup)
TEST_WORKERS ?= 3

test: $(VENV)/.installed-dev system-deps lint typecheck
	$(BIN)/pytest -q -ra --durations=25 -n $(TEST_WORKERS) --dist loadgroup

# everything that needs no broker, no database server, no browser, no Alertmanager and no
# Prometheus, with a third of the Hypothesis examples (tests/hypothesis_profiles.py): under a minute
unit: $(VENV)/.installed-dev
	$(BIN)/pytest -q -ra -n 4 --dist loadgroup --hypothesis-profile=unit -m "not mosquitto and not postgres and not chromium and not alertmanager and not prometheus and not slow"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
