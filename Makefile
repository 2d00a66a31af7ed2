# Portway: `make serve` runs the server on the embedded default, `make test` runs every check.
# Everything goes through the project's own virtualenv in .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.portway-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv serve test lint pytest bench clean distclean

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes (or the stamp is missing).
$(STAMP): pyproject.toml | $(PY)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

serve: venv
	$(VENV)/bin/portway serve $(ARGS)

LINT = $(VENV)/bin/ruff check src tests bench && $(VENV)/bin/mypy

lint: venv
	$(LINT)

# pytest exits 5 when it collects nothing; that must fail the build like any other error.
pytest: venv
	@rc=0; $(PY) -m pytest -p no:cacheprovider -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests" >&2; fi; \
	exit $$rc

test: venv
	scripts/install-test-deps.sh
	$(LINT)
	@$(MAKE) --no-print-directory pytest

bench: venv
	$(PY) bench/run.py $(ARGS)

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -prune -exec rm -rf {} +
	rm -f $(STAMP)

distclean: clean
	rm -rf $(VENV)
