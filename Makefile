# The two commands of the README:
#   make quickstart   install (first time) and run the tutorial on the embedded benchmark
#   make test         install (first time) and run lint + the test suite
# Everything is installed into .venv from the pinned, known-good set in requirements-lock.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test lint format clean-data

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-lock.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(PY) -m pipa_core.quickstart

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The notebooks' source is notebooks/<name>.py (jupytext percent scripts); this writes
# each paired .ipynb from it, keeping cell ids and never adding outputs.
.PHONY: notebooks
notebooks: $(STAMP)
	$(VENV)/bin/ruff format notebooks
	$(VENV)/bin/jupytext --to ipynb --update notebooks/[a-z]*.py
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace --log-level=WARN notebooks/*.ipynb

# Speed / memory benchmarks (docs/performance.md): results in benchmarks/results/, summary.md.
.PHONY: bench
bench: $(STAMP)
	$(PY) benchmarks/run_all.py
