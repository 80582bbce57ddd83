# Comity: two commands set everything up on a fresh machine (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/comity demo --workdir .demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# two workers, one per core of the machines it runs on: the suite waits on I/O much of the time (decision 179)
test: lint
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.skeleton
	$(BIN)/python -m bench.ledger
	$(BIN)/python -m bench.stats --cases 100000 --backend postgresql

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
