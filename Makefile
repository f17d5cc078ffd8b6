PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test bench fuzz test-jax docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stabcheck check examples/ --trace --confirm --exit-zero --no-cache --no-types
	$(BIN)/stabcheck matrix examples/solver.py:solver_functions

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/server.py
	$(BIN)/python benchmarks/plugin.py

fuzz: $(STAMP)
	STABCHECK_FUZZ_EXAMPLES=5000 $(BIN)/python -m pytest tests/test_fuzz.py -q

# the traced/confirm/runtime tests in fresh venvs (.jax-matrix/) for the oldest JAX pyproject.toml
# declares and the newest on PyPI; JAX="0.4.35 0.6.0" tests other versions
test-jax: $(STAMP)
	$(BIN)/python benchmarks/jax_matrix.py $(JAX)

docs: $(STAMP)
	$(BIN)/python -m stabcheck.docs > docs/rules.md

clean:
	rm -rf $(VENV) .stabcheck_cache .jax-matrix build *.egg-info
