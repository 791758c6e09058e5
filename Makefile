# koa_core: `make test` and `make book` set everything up on a fresh clone.
# The virtualenv is created on first use; the stamp reinstalls it when pyproject changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.koa-installed
PROFILE ?= published

.PHONY: install test test-fast book lint mutate clean

$(STAMP): pyproject.toml web/package-lock.json
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[book,dev,onnx,ssl]"
	# the book's in-browser grader: onnxruntime-web at the version web/package-lock.json pins
	cd web && npm ci --ignore-scripts --no-audit --no-fund
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

# Mutation testing of the modules named under [tool.mutmut] in pyproject.toml (not in CI;
# about 2,200 mutants, hours on 2 cores: a mutant whose tests train the shared tiny run takes
# 5-15 s). Verdicts are kept in mutants/ and a later run tests only the mutants of changed
# functions; changing the test selection in pyproject.toml resets them all.
# Survivors: $(VENV)/bin/mutmut results; one: mutmut show NAME.
mutate: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[mutate]"
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

clean:
	rm -rf _build .pytest_cache mutants
