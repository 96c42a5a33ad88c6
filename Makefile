# Two entry points, each sets itself up: `make demo` (the whole pipeline on the embedded real AIS
# data) and `make test` (the test suite). The venv is built once: torch (CPU wheel) first, then
# the project with its extras; later calls only re-install when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trajfm-installed

.PHONY: demo test setup bench clean lint format docs ui-prefect ui-mlflow pretrain

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trajfm demo

# Pre-train base-small on the whole corpus (corpora/base.yaml) and register trajfm-base;
# PRETRAIN_ARGS passes flow parameters, e.g. PRETRAIN_ARGS="--preset base --nproc 4".
pretrain: $(STAMP)
	$(BIN)/trajfm run pretrain --corpus base --preset base-small $(PRETRAIN_ARGS)

# Lint first (style and the import contracts of DESIGN.md), then the docs site (offline, warnings
# are errors; output in the ignored site/), then the tests.
test: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	$(BIN)/python -m pytest -q -ra

docs: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# Style and import contracts alone (also the first steps of `make test`); `make format` fixes style.
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix
	$(BIN)/ruff format

clean:
	rm -rf .trajfm site

# The UIs over the demo's data (both bind 127.0.0.1 only).
ui-prefect: $(STAMP)
	PREFECT_HOME=$(CURDIR)/.trajfm/prefect $(BIN)/prefect server start --host 127.0.0.1 --port 4200

ui-mlflow: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.trajfm/mlflow.db --host 127.0.0.1 --port 5000
