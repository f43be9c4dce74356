# Two commands do all set-up on a fresh machine with only Python 3:
#   make demo   -> creates .venv, installs videostate, runs `videostate demo`
#   make test   -> creates .venv, installs videostate with test extras, runs the test suite, then the Triton
#                  kernel tests again through Triton's CPU interpreter
# TORCH selects the PyTorch build; the default pins the CPU-friendly 2.13.0 release.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/videostate demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m kernel

clean:
	rm -rf $(VENV) build *.egg-info
