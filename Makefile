# visionsweep: `make demo` and `make test` set everything up in .venv on a fresh machine (Python >= 3.10).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The OpenMMLab stack (MMDetection models, yolov5): mmcv is built from its sdist once per machine and kept
# in ~/.cache/visionsweep/wheels (see cluster/install_openmmlab.py); `make test` installs it.
OPENMMLAB := $(VENV)/.openmmlab
# Azurite (the Azure Blob emulator the storage tests run against) comes from npm, into an ignored folder.
TOOLS  ?= .test-tools
AZURITE_VERSION ?= 3.35.0
AZURITE := $(TOOLS)/node_modules/.bin/azurite-blob

.PHONY: setup openmmlab demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(AZURITE):
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --no-save --no-audit --no-fund --prefix $(TOOLS) azurite@$(AZURITE_VERSION); \
	else \
	  echo "npm not found: the Azure Blob storage tests need Node.js >= 18 with npm (they skip, or fail under CI)"; \
	fi

$(OPENMMLAB): $(STAMP) cluster/install_openmmlab.py
	$(PY) -m cluster.install_openmmlab
	touch $(OPENMMLAB)

openmmlab: $(OPENMMLAB)

setup: $(STAMP) $(AZURITE)

demo: setup
	$(VENV)/bin/visionsweep demo

test: setup $(OPENMMLAB)
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/classification_throughput.py

clean:
	rm -rf $(VENV) $(TOOLS) runs .pytest_cache
