# One-command set-up: `make test` / `make demo` install everything they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmdavit-installed
TORCH ?= torch==2.14.1 torchvision==0.29.1
# torch >= 2.14 headers need C++20, which mmcv 2.1.0's setup.py does not ask for; older torch builds with g++ as is.
MMCV_CXX ?= $(CURDIR)/tools/install/cxx20
PYTEST_ARGS ?=
TESTS ?= tests
# The oldest supported stack: torch 2.1, what OpenMMLab's prebuilt mmcv 2.1.0 CUDA wheels are built for.
OLDEST_VENV := .venv-oldest
OLDEST_TORCH := torch==2.1.2 torchvision==0.16.2 "numpy<2"
OLDEST := VENV=$(OLDEST_VENV) TORCH='$(OLDEST_TORCH)' MMCV_CXX=g++
# On the oldest torch: every test that touches a version-dependent API (import, loading, hub, runner and
# resume, layer decay, AMP, FSDP, export and deployment, tools/analysis) and a synthetic twin of each task
# family; the rest (config tables, docs, data generator, pictures) does not depend on torch's version.
OLDEST_TESTS := tests/test_safe_loading.py tests/test_package.py tests/models tests/engine \
  tests/reliability/test_resume.py tests/reliability/test_mixed_precision.py tests/reliability/test_export.py \
  tests/reliability/test_distributed.py tests/deploy tests/configs/test_heads_training.py \
  tests/tools/test_entry_points.py tests/tools/test_benchmark.py tests/tools/test_get_flops.py
# mmcv's compiled ops work only with the torch they were built against, and pip's own wheel cache does not
# know which that was: keep one built wheel per torch version.
MMCV_WHEELS ?= $(HOME)/.cache/mmdavit/mmcv-wheels
# pip shows only "Building wheel for mmcv ... still running" for a quarter of an hour: say so before it starts.
MMCV_NOTE := mmdavit: compiling mmcv 2.1.0 against this torch takes ~15-25 min on 2 cores (measured; seconds \
when the wheel is kept from an earlier install). It has not hung.

.PHONY: install test install-oldest test-oldest demo demo-data clean-venv

install: $(STAMP)

# Order matters: the pinned torch first (local files; a bare `torch` would download a CUDA build),
# then setuptools with pkg_resources, then mmcv compiled against that torch under C++20.
$(STAMP): setup.py requirements/runtime.txt requirements/tests.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH) "setuptools>=77,<80" wheel
	$(PY) -c "import mmcv.ops" 2>/dev/null || { \
	  wheels=$(MMCV_WHEELS)/torch-$$($(PY) -c "import torch; print(torch.__version__)"); \
	  ls $$wheels/mmcv-2.1.0-*.whl >/dev/null 2>&1 || { echo "$(MMCV_NOTE)"; \
	    CXX=$(MMCV_CXX) MAX_JOBS=2 $(PIP) wheel --no-cache-dir --no-build-isolation --no-deps mmcv==2.1.0 -w $$wheels; }; \
	  $(PIP) install $(TORCH) $$wheels/mmcv-2.1.0-*.whl; }
	$(PIP) install $(TORCH) "setuptools>=77,<80" -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import torch, mmcv.ops, mmdet, mmseg, mmpretrain, timm, mmdavit; print('stack ok: torch', torch.__version__)"
	touch $@

test: install
	$(PY) -m pytest $(TESTS) $(PYTEST_ARGS)

# A second venv with torch 2.1.2 (+ numpy < 2) and mmcv 2.1.0 compiled against it.
install-oldest:
	$(MAKE) install $(OLDEST)

test-oldest:
	$(MAKE) test $(OLDEST) TESTS="$(OLDEST_TESTS)" PYTEST_ARGS="-rs $(PYTEST_ARGS)"

# The embedded default: synthetic COCO/ADE-format data, Mask R-CNN then UperNet through mim, each
# evaluated with pictures of its predictions and a plot of loss and mAP / mIoU, all under work_dirs/.
MIM := $(VENV)/bin/mim
DET_DEMO := maskrcnn_davit_t_synthetic
SEG_DEMO := upernet_davit_t_synthetic
# The last checkpoints of the configs' schedules (3 epochs, 160 iterations).
DET_DEMO_CKPT := epoch_3.pth
SEG_DEMO_CKPT := iter_160.pth

demo-data: install
	$(PY) tools/generate_synthetic_data.py all --out data/synthetic --size 128 160

demo: demo-data
	$(MIM) train mmdet configs/detection/$(DET_DEMO).py --work-dir work_dirs/$(DET_DEMO)
	$(MIM) test mmdet configs/detection/$(DET_DEMO).py --checkpoint work_dirs/$(DET_DEMO)/$(DET_DEMO_CKPT) \
	  --work-dir work_dirs/$(DET_DEMO)/test --show-dir predictions
	$(PY) tools/analysis/plot_training.py work_dirs/$(DET_DEMO)
	$(MIM) train mmseg configs/segmentation/$(SEG_DEMO).py --work-dir work_dirs/$(SEG_DEMO)
	$(MIM) test mmseg configs/segmentation/$(SEG_DEMO).py --checkpoint work_dirs/$(SEG_DEMO)/$(SEG_DEMO_CKPT) \
	  --work-dir work_dirs/$(SEG_DEMO)/test --show-dir work_dirs/$(SEG_DEMO)/test/predictions
	$(PY) tools/analysis/plot_training.py work_dirs/$(SEG_DEMO)
	@echo "demo done: see work_dirs/$(DET_DEMO) and work_dirs/$(SEG_DEMO) (training_curves.png, pictures under test/)"

clean-venv:
	rm -rf $(VENV) $(OLDEST_VENV)
