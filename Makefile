# The two commands of the README:
#   make demo   set up a virtual environment and run the offline demo (the main job)
#   make test   set up a virtual environment and run the test suite
# PYTHON picks the interpreter; TORCH_SPEC pins the torch build installed before the package
# (a CPU build is used where the local package index has one); constraints.txt pins every resolved version.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-fast setup check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip==26.3"

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/dppa-peft demo

# lint, type check and the layers contract (settings in pyproject.toml), run by `make test` before the tests
check: setup
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m mypy
	$(BIN)/lint-imports

test: check
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadfile tests

# the fast tier while you work (no fresh processes, lm-eval runs, demo zoo, >2^24 tensors or wheel build)
test-fast: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow" tests
