# longshort: `make train` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A local CPU wheel of torch (as on the project's build machines) is taken first when present; elsewhere
# pip resolves torch>=2.6 from the index as usual (pre-install the torch build you want to choose it).
TORCH_WHEEL_DIR ?= /opt/wheels
TORCH_LOCAL := $(firstword $(wildcard $(TORCH_WHEEL_DIR)/torch-2.13.0*.whl))

.PHONY: install install-test train test lint bench accuracy clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifneq ($(TORCH_LOCAL),)
	$(PIP) install -q "$(TORCH_LOCAL)"
endif
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

## Train the default model on the built-in dataset and print where the run went.
train: install
	$(VENV)/bin/longshort train --config configs/quickstart.yaml

## Install test needs and run the whole suite.
test: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/train_step.py

## The default recipe against a plain BiLSTM and MiniRocket on public UCR/UEA sets (about 40 min on 2 cores).
accuracy: install
	$(PIP) install -q -e ".[bench]"
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
