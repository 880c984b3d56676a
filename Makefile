# The quick start: `make demo` runs the reference project end to end, `make test` runs the test suite.
# Both install what they need into .venv first (nothing has to be installed by hand).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
DEMO_CUSTOMERS ?= 2000

.PHONY: install demo test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo,test]'
	touch $@

demo: install
	$(BIN)/python -m demo.generate --out data/raw --customers $(DEMO_CUSTOMERS)
	$(BIN)/dbt build --project-dir . --profiles-dir .
	$(BIN)/featuremart sync
	$(BIN)/featuremart get --service fraud_model $$($(BIN)/python -m demo.sample_entity)

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not integration"

clean:
	rm -rf target dbt_packages logs data
