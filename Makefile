# Two commands set everything up on a fresh machine:
#   make demo   - creates .venv if missing, installs, fetches MovieLens-100K, runs the main job
#   make test   - the same install, then the test suite (what .ci/run calls)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# cpu or cuda: picks requirements/$(TARGET).txt (the torch/FBGEMM pairing). Default: the target
# this VENV was installed for (its stamp file), else cpu.
TARGET ?= $(if $(wildcard $(VENV)/.installed-cuda),cuda,cpu)
OTHER  := $(if $(filter cuda,$(TARGET)),cpu,cuda)
# where pip finds the CUDA builds of the pinned torch/FBGEMM; every cluster file installs through
# this Makefile. CPU installs use pip's own configuration (TORCH_INDEX=... to add one).
CUDA_INDEX  ?= https://download.pytorch.org/whl/cu126
TORCH_INDEX ?= $(if $(filter cuda,$(TARGET)),$(CUDA_INDEX))
RUN    ?= runs/demo
export PYTHONUNBUFFERED := 1

.PHONY: install demo test bench clean

install: $(VENV)/.installed-$(TARGET)

# Switching targets in one VENV: the other build's torch, FBGEMM and torchrec go first
# (fbgemm-gpu and fbgemm-gpu-cpu share one import directory, and an installed 2.13.0+cpu torch
# would satisfy torch==2.13.0). `.installed`, the stamp of Makefiles that did not record the
# target, is taken for a CPU install.
$(VENV)/.installed-$(TARGET): pyproject.toml requirements/$(TARGET).txt requirements/torchrec.txt
	test -x $(PY) || python3 -m venv $(VENV)
	if [ -e $(VENV)/.installed-$(OTHER) ] || { [ $(TARGET) = cuda ] && [ -e $(VENV)/.installed ]; }; then \
	    echo "switching $(VENV) to TARGET=$(TARGET)"; \
	    $(PY) -m pip uninstall -q -y torch fbgemm-gpu fbgemm-gpu-cpu torchrec; \
	    rm -f $(VENV)/.installed-$(OTHER); \
	fi
	rm -f $(VENV)/.installed
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r requirements/$(TARGET).txt
	$(PY) -m pip install -q --no-deps -r requirements/torchrec.txt
	$(PY) -m pip install -q -e '.[serve,test]'
	touch $@

demo: install
	$(VENV)/bin/unirec demo --out $(RUN)

test: install
	$(VENV)/bin/ruff check unirec_dist launch tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/prepare.py

clean:
	rm -rf $(RUN) .pytest_cache
