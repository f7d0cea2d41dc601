# The two commands of the README: `make train` (default recipe) and `make test` (the suite).
# Each creates or reuses a virtualenv in $(VENV) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and on its own: on CPU-only machines set TORCH to a CPU build
# (this project's CI machine carries the torch 2.13.0 CPU wheel); elsewhere pip picks the default build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=
CONFIG ?= accelerate_configs/cpu.yaml

.PHONY: train test lint install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Each `make train` replaces the previous run in outputs/digits (ARGS come later, so they can change that).
train: $(BIN)/.installed
	$(BIN)/accelerate launch --config_file $(CONFIG) recipes/digits.py --overwrite_output_dir true $(ARGS)

# ruff (pyproject.toml [tool.ruff]) first: a lint error fails the suite before it starts.
lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: lint
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) outputs *.egg-info
