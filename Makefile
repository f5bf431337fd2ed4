# visionsweep: `make demo` and `make test` set everything up in .venv on a fresh machine (Python >= 3.10).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/visionsweep demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/classification_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
