# Two entry points (see README): `make repro` runs the pipeline, `make test` runs the tests.
# Both create the virtualenv on first use; torch/torchvision are pinned to the wheels this
# machine kind has on disk (on a GPU machine with internet the same pins come from PyPI).
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0

.PHONY: repro test test-fast lint system-deps

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

repro: $(VENV)/.installed
	dvc repro

system-deps:
	bash scripts/install_system_deps.sh

lint: $(VENV)/.installed
	ruff check .

test: $(VENV)/.installed system-deps lint
	pytest -q -n 2 --dist loadgroup

test-fast: $(VENV)/.installed
	pytest -q -n 2 -m "not slow"
