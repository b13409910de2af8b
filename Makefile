# Every target sets up .venv on first use, so each works on a fresh clone with only
# Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench chaos clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pixrun run manifests/demo.yaml --simulate --yes

lint: $(STAMP)
	$(BIN)/ruff check runner tests benchmarks
	$(BIN)/ruff format --check runner tests benchmarks
	$(BIN)/mypy runner

test: lint
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff check --fix runner tests benchmarks
	$(BIN)/ruff format runner tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

chaos: $(STAMP)
	PIXRUN_CHAOS_FULL=1 $(BIN)/python -m pytest -q -m slow tests/test_chaos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
