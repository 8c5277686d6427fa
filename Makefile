# distillkit — every target is documented in README.md ("Make targets").
PY ?= python
VENV ?= .venv
PIP = $(VENV)/bin/pip
VPY = $(VENV)/bin/python
TORCH ?= torch==2.13.0
SCALE ?= paper
TABLES ?=

.PHONY: help install test test-slow test-all lint format bench train reproduce-tables mini-experiment clean clean-logs

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

install:  ## create .venv, install the pinned CPU torch first, then distillkit with its dev extras
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,optuna]"

lint:  ## ruff check and ruff format --check over the package, tests and benchmarks
	$(VENV)/bin/ruff check distillkit tests benchmarks
	$(VENV)/bin/ruff format --check distillkit tests benchmarks

format:  ## ruff format + autofix
	$(VENV)/bin/ruff format distillkit tests benchmarks
	$(VENV)/bin/ruff check --fix distillkit tests benchmarks

test: lint  ## lint, then the default (fast, CPU) test suite
	$(VPY) -m pytest -m "not slow and not gpu and not bench" -q

test-slow:  ## the slow tests (end-to-end runs, reproduce-tables smoke)
	$(VPY) -m pytest -m "slow" -q

test-all: lint  ## every CPU test
	$(VPY) -m pytest -m "not gpu" -q

bench:  ## benchmarks: spans (parse/cached, pooling vs step) and methods (step time / peak memory ratios)
	$(VPY) benchmarks/run_all.py

train:  ## the main job on the offline default (tiny pair, synthetic data)
	$(VPY) -m distillkit.run

reproduce-tables:  ## run what is missing for every table and aggregate (SCALE=paper|smoke, TABLES="a b")
	$(VPY) -m distillkit.tables.reproduce --scale $(SCALE) $(if $(TABLES),--tables $(TABLES),)

mini-experiment:  ## the CPU mini-experiment of the README (Dolly, tiny models, every method, 2 seeds)
	$(VPY) -m distillkit.tables.reproduce --scale mini --tables mini

clean-logs:  ## remove run outputs (outputs/, multirun/)
	rm -rf outputs multirun lightning_logs

clean: clean-logs  ## also remove caches of tools
	rm -rf .pytest_cache .ruff_cache .hypothesis
