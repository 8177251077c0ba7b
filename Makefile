# Entry points for a fresh machine: `make demo` (a first look in about a minute), `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A machine without an NVIDIA driver gets the CPU build of torch (2.13.0 is the
# CPU wheel cached on the build machines); with a GPU, any torch>=2.4 will do.
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4,torch==2.13.0)
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,dask,mnist1d,zoo]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/weightsim run --config quick --store store

run: $(VENV)/.installed
	$(BIN)/weightsim run --store store

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.run --quick --json benchmarks/latest.json

clean:
	-[ ! -x $(BIN)/weightsim ] || $(BIN)/weightsim server stop
	rm -rf $(VENV) .prefect store
