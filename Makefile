# koa_core: `make test` and `make book` set everything up on a fresh clone.
# The virtualenv is created on first use; the stamp reinstalls it when pyproject changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.koa-installed
PROFILE ?= published

.PHONY: install test test-fast book lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[book,dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

book: $(STAMP)
	$(PY) -m koa_core.cli book --profile $(PROFILE)

lint: $(STAMP)
	$(VENV)/bin/ruff check koa_core tests

clean:
	rm -rf _build .pytest_cache
