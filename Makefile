# `make test` and `make demo` bootstrap everything themselves: a fresh clone needs only python3 >= 3.11.
PYTHON ?= python3
VENV ?= .venv
# Most test time is XLA compilation, single-threaded per process: one worker per core halves it.
TEST_WORKERS ?= 2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo docs bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check sciml_bridge tests benchmarks examples docs
	$(VENV)/bin/pyright --pythonpath $(PY) sciml_bridge
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# One LAPACK thread: the demo's multi-start runs on every core (see examples/pinn/poisson_2d.py).
demo: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(VENV)/bin/sciml-bridge demo

# The site goes to site/; the demo runs first so the examples page shows real figures.
docs: $(STAMP)
	SB_DOCS_EXAMPLES=1 NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The peers (folx, torch CPU, torchdiffeq) live in the `bench` extra: only this target installs it.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(VENV)/bin/sciml-bridge bench

lint: $(STAMP)
	$(VENV)/bin/ruff check sciml_bridge tests benchmarks examples docs

clean:
	rm -rf $(VENV) out site docs/generated .pytest_cache .ruff_cache
