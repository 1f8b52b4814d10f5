# One-command set-up: `make test` / `make demo` install everything they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmdavit-installed
TORCH := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install test demo clean-venv

install: $(STAMP)

# Order matters: the pinned torch first (local files; a bare `torch` would download a CUDA build),
# then setuptools with pkg_resources, then mmcv compiled against that torch under C++20.
$(STAMP): setup.py requirements/runtime.txt requirements/tests.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH) "setuptools>=77,<80" wheel
	$(PY) -c "import mmcv.ops" 2>/dev/null || \
	  CXX=$(CURDIR)/tools/install/cxx20 MAX_JOBS=2 $(PIP) install --no-build-isolation mmcv==2.1.0
	$(PIP) install $(TORCH) "setuptools>=77,<80" -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import torch, mmcv.ops, mmdet, mmseg, mmpretrain, timm, mmdavit; print('stack ok: torch', torch.__version__)"
	touch $@

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
