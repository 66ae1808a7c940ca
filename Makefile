# Two entry points (see README.md):
#   make demo  — install into .venv, then `dvc repro` the whole pipeline on the embedded demo
#   make test  — install into .venv (with test extras), then lint (ruff) and run the test suite (pytest)
#   make dev-demo — the demo on the development renderer seed (synthesize.seed: 1) in .dev-seed/ (docs/study.md)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo dev-demo test

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# one local Prefect server for the whole run (its database in .cache/prefect) instead of an ephemeral API per stage
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pipeline.orchestration.local_prefect -- dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc metrics show
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pipeline.evaluate.summary   # arms x accuracy / UF1 / UAR (mean ± std over seeds), the report

# design choices are made on this seed, never on the one the README reports: a clone of HEAD in .dev-seed/
dev-demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m tools.study workspace --workspace .dev-seed
	cd .dev-seed && PATH="$(CURDIR)/$(BIN):$$PATH" python -m pipeline.orchestration.local_prefect -- dvc repro
	cd .dev-seed && PATH="$(CURDIR)/$(BIN):$$PATH" python -m pipeline.evaluate.summary

# lint first (ruff, rules in pyproject.toml), then every test and the library's doctests
test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest
