# Two entry points (see README): `make repro` runs the pipeline, `make test` runs the tests.
# Both create the virtualenv on first use: torch/torchvision first (PyTorch's CPU wheels when
# its index answers within 5 s, else from the default index / local wheels), then every other
# dependency pinned, with hashes, in requirements.lock (a universal lock for Python 3.10-3.13 made
# by uv: scripts/lock.py), then this package (editable, with every extra's dependencies).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0

.PHONY: repro test test-fast lint lock-check system-deps lock venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	@$(PYTHON) scripts/check_python.py
	$(PYTHON) -m venv $(VENV)
	@if $(BIN)/python scripts/reachable.py $(TORCH_INDEX)/torch/ 5; then \
	  echo "torch: CPU wheels from $(TORCH_INDEX)"; \
	  $(PIP) install --index-url $(TORCH_INDEX) $(TORCH_PINS); \
	else \
	  echo "torch: $(TORCH_INDEX) unreachable; using the default index (local wheels here)"; \
	  $(PIP) install $(TORCH_PINS); \
	fi
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

repro: $(VENV)/.installed
	dvc repro

# System packages (pdflatex, chromium) for the tests that compile/render the reports: installed
# by .ci/run, or here only when asked: `make test SYSTEM_DEPS=1`.
system-deps:
	bash scripts/install_system_deps.sh

lint: $(VENV)/.installed
	ruff check .

# requirements.lock made from the current pyproject.toml, complete for Python 3.10-3.13 (offline)
lock-check: $(VENV)/.installed
	$(BIN)/python scripts/lock.py --check

test: $(VENV)/.installed $(if $(SYSTEM_DEPS),system-deps) lint lock-check
	pytest -q -n 2 --dist loadgroup

test-fast: $(VENV)/.installed
	pytest -q -n 2 -m "not slow"

# Re-resolve requirements.lock with uv (after changing dependencies in pyproject.toml); keeps the
# pinned versions that still fit. Needs PyPI.
lock: $(VENV)/.installed
	$(BIN)/python scripts/lock.py
