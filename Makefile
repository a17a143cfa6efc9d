# Two commands set everything up on a fresh machine:
#   make demo   - creates .venv if missing, installs, fetches MovieLens-100K, runs the main job
#   make test   - the same install, then the test suite (what .ci/run calls)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# cpu or cuda: picks requirements/$(TARGET).txt (the torch/FBGEMM pairing)
TARGET ?= cpu
RUN    ?= runs/demo
export PYTHONUNBUFFERED := 1

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/$(TARGET).txt requirements/torchrec.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/$(TARGET).txt
	$(PY) -m pip install -q --no-deps -r requirements/torchrec.txt
	$(PY) -m pip install -q -e '.[serve,test]'
	touch $@

demo: install
	$(VENV)/bin/unirec demo --out $(RUN)

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/prepare.py

clean:
	rm -rf $(RUN) .pytest_cache
