# One command sets everything up and runs the demo; one runs the tests (README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup

$(BIN)/cpt: pyproject.toml
	$(PY) -m venv $(VENV)
	# the CPU build of torch first: with it installed, the package's torch range pulls nothing more
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/cpt

setup: $(BIN)/cpt

demo: setup
	$(BIN)/cpt demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(BIN)/python -m pytest
