# One-command set-up: `make test` / `make demo` install everything they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mmdavit-installed
TORCH := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# The oldest supported torch, 2.1.2 (what OpenMMLab's prebuilt mmcv 2.1.0 CUDA wheels are built for), in a second
# venv with its own mmcv 2.1.0 compiled against it and the same OpenMMLab packages. It runs every test that touches a
# version-dependent API (imports, checkpoint loading and its refusals, hf-hub://, the runners with resume, layer decay,
# CPU AMP, FSDP on CPU ranks, export) and the synthetic Mask R-CNN that trains, checkpoints, resumes and evaluates.
OLDEST_VENV := .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_STAMP := $(OLDEST_VENV)/.mmdavit-installed
OLDEST_TORCH := torch==2.1.2 torchvision==0.16.2 "numpy<2"
OLDEST_TESTS := tests/test_safe_loading.py tests/test_torch_versions.py tests/models/test_backbone.py tests/models/test_checkpoints.py \
  tests/models/test_equivalence.py tests/models/test_florence2.py tests/models/test_hub.py tests/models/test_params.py tests/models/test_arch_embed_dims.py \
  tests/engine/test_layer_decay.py tests/engine/test_hooks.py tests/engine/test_runner_checkpoints.py \
  tests/reliability/test_mixed_precision.py tests/reliability/test_export.py tests/reliability/test_resume.py \
  tests/configs/test_mim_and_inheritance.py::test_mim_train_and_test_mmdet_from_elsewhere \
  tests/deploy/test_postprocess_ops.py tests/deploy/test_export_detection.py
# mmcv's compiled ops work only with the torch they were built against, and pip's own wheel cache does not
# know which that was: keep one built wheel per torch version.
MMCV_WHEELS ?= $(HOME)/.cache/mmdavit/mmcv-wheels
# pip shows only "Building wheel for mmcv ... still running" for a quarter of an hour: say so before it starts.
MMCV_NOTE := mmdavit: compiling mmcv 2.1.0 against this torch takes ~15-25 min on 2 cores (measured; seconds \
when the wheel is kept from an earlier install). It has not hung.

# $(call install_mmcv,PYTHON,TORCH PINS,COMPILER VARIABLES): mmcv 2.1.0 with its ops, from the kept wheel for this
# torch or compiled into it first.
define install_mmcv
$(1) -c "import mmcv.ops" 2>/dev/null || { \
	  wheels=$(MMCV_WHEELS)/torch-$$($(1) -c "import torch; print(torch.__version__)"); \
	  ls $$wheels/mmcv-2.1.0-*.whl >/dev/null 2>&1 || { echo "$(MMCV_NOTE)"; \
	    $(3) MAX_JOBS=2 $(1) -m pip wheel --no-cache-dir --no-build-isolation --no-deps mmcv==2.1.0 -w $$wheels; }; \
	  $(1) -m pip install $(2) $$wheels/mmcv-2.1.0-*.whl; }
endef

.PHONY: install test install-oldest test-oldest demo demo-data clean-venv

install: $(STAMP)

# Order matters: the pinned torch first (local files; a bare `torch` would download a CUDA build),
# then setuptools with pkg_resources, then mmcv compiled against that torch under C++20.
$(STAMP): setup.py requirements/runtime.txt requirements/tests.txt requirements/deploy.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH) "setuptools>=77,<80" wheel
	$(call install_mmcv,$(PY),$(TORCH),CXX=$(CURDIR)/tools/install/cxx20)
	$(PIP) install $(TORCH) "setuptools>=77,<80" -r requirements/runtime.txt -r requirements/tests.txt -r requirements/deploy.txt
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PY) -c "import torch, mmcv.ops, mmdet, mmseg, mmpretrain, timm, mmdavit; print('stack ok: torch', torch.__version__)"
	touch $@

# Two pytest-xdist workers, one per core, each file on one worker (its module fixtures built once).
test: install
	$(PY) -m pytest -n 2 --dist loadfile tests $(PYTEST_ARGS)

install-oldest: $(OLDEST_STAMP)

$(OLDEST_STAMP): setup.py requirements/runtime.txt requirements/tests.txt
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --upgrade pip
	$(OLDEST_PY) -m pip install $(OLDEST_TORCH) "setuptools>=77,<80" wheel
	$(call install_mmcv,$(OLDEST_PY),$(OLDEST_TORCH),)
	$(OLDEST_PY) -m pip install $(OLDEST_TORCH) "setuptools>=77,<80" mmengine==0.10.7 -r requirements/runtime.txt -r requirements/tests.txt
	$(OLDEST_PY) -m pip install --no-build-isolation --no-deps -e .
	$(OLDEST_PY) -c "import torch, mmcv.ops, mmdet, mmseg, mmpretrain, mmdavit; print('oldest stack ok: torch', torch.__version__)"
	touch $@

# -rs prints why a test is skipped there (a feature that needs a newer torch).
test-oldest: install-oldest
	$(OLDEST_PY) -m pytest -rs $(OLDEST_TESTS) $(PYTEST_ARGS)

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
