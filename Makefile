# Portway: `make serve` runs the server on the embedded default, `make test` runs every check.
# Everything goes through the project's own virtualenv in .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two stamps: serving needs Portway and its dependencies only; the test stamp adds the test
# and lint tools (pytest, ruff, mypy) on top.
SERVE_STAMP := $(VENV)/.portway-serve-installed
TEST_STAMP := $(VENV)/.portway-test-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv serve test lint pytest bench image clean distclean

# `make venv`: the development environment (what `make test` uses).
venv: $(TEST_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes (or a stamp is missing).
$(SERVE_STAMP): pyproject.toml | $(PY)
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(SERVE_STAMP)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

serve: $(SERVE_STAMP)
	$(VENV)/bin/portway serve $(ARGS)

LINT = $(VENV)/bin/ruff check src tests bench && $(VENV)/bin/mypy

lint: venv
	$(LINT)

# pytest exits 5 when it collects nothing; that must fail the build like any other error.
# Two pytest workers (pytest-xdist), each given whole test files (module fixtures stay whole):
# most tests wait on servers, clients and timers, so two share the 2 cores well. Progress is
# one line per test, naming its file and the worker; the slowest tests are listed at the end.
PYTEST_WORKERS = 2
PYTEST_PROGRESS = -n $(PYTEST_WORKERS) --dist loadfile -v --durations=15 --durations-min=1
# The tests start hundreds of `portway` processes (servers, their workers, CLI commands); with
# PYTHONDONTWRITEBYTECODE set none of them writes a .pyc, so each compiled all of src/ again
# (~0.15 s of CPU a process). Compiled once here, they read it (compileall skips what is current).
pytest: venv
	@[ ! -d src ] || $(PY) -m compileall -q src
	@rc=0; $(PY) -m pytest -p no:cacheprovider $(PYTEST_PROGRESS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests" >&2; fi; \
	exit $$rc

test: venv
	scripts/install-test-deps.sh
	$(LINT)
	@$(MAKE) --no-print-directory pytest

bench: venv
	$(PY) bench/run.py $(ARGS)

# Portway's OCI image, built with buildah from scratch (README "Running as a container").
image: venv
	deploy/build-image.sh $(ARGS)

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -prune -exec rm -rf {} +
	rm -f $(SERVE_STAMP) $(TEST_STAMP) $(VENV)/.portway-installed

distclean: clean
	rm -rf $(VENV)
