# The two commands of the README: `make test` and `make demo`. Both install into .venv first when needed.
# PYTHON names the Python 3.11 interpreter to build .venv with (default python3.11 on the PATH):
#   make PYTHON=/path/to/python3.11 test
# `make help` lists the targets.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the core environment: lit-kd without the sparse extra (numpy 2, current onnx/onnxruntime); PYTHON_CORE may be 3.11-3.13
PYTHON_CORE ?= $(PYTHON)
CORE_VENV := .venv-core
CORE_STAMP := $(CORE_VENV)/.installed
export NM_DISABLE_ANALYTICS := 1

.PHONY: help install install-core lint test test-full test-core demo clean
.DEFAULT_GOAL := help

help:
	@echo "make install   create $(VENV) with $(PYTHON) and install lit-kd with the sparse, openvino and test extras (once; again when setup.cfg, pyproject.toml or constraints/ change)"
	@echo "make install-core  create $(CORE_VENV) with $(PYTHON_CORE): lit-kd with the openvino and test extras, without the sparse extra"
	@echo "make lint      install, then ruff check and ruff format --check (configured in pyproject.toml)"
	@echo "make test      lint, then pytest in both environments: test-full and test-core"
	@echo "make test-full pytest in $(VENV) (core + sparse extra: every test)"
	@echo "make test-core pytest in $(CORE_VENV) (core only, numpy 2: every test not marked 'sparse')"
	@echo "make demo      install, then run the demo study (experiments/studies/demo.yaml) into runs/demo"
	@echo "make clean     remove $(VENV) and build outputs"
	@echo "PYTHON=/path/to/python3.11   the interpreter $(VENV) is built with (now: $(PYTHON)); the sparse extra needs Python 3.11"
	@echo "PYTHON_CORE=/path/to/python  the interpreter $(CORE_VENV) is built with (now: $(PYTHON_CORE)); the core runs on 3.11-3.13"

# the interpreter must run and be 3.11 (a pyenv shim without that version installed is found on the PATH but fails)
$(STAMP): setup.cfg pyproject.toml constraints/full.txt
	@version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	if [ "$$version" != "3.11" ]; then \
		if [ -z "$$version" ]; then found="not found (or does not run)"; else found="is Python $$version"; fi; \
		echo "error: PYTHON=$(PYTHON) $$found; the full environment needs Python 3.11 (the sparse extra, sparseml/deepsparse 1.8, supports no newer one): install it, or run make PYTHON=/path/to/python3.11 $(or $(MAKECMDGOALS),install)" >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77.0.3,<81"
	$(BIN)/python -m pip install --quiet --no-build-isolation -c constraints/full.txt -e ".[sparse,openvino,test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

$(CORE_STAMP): setup.cfg pyproject.toml constraints/core.txt
	$(PYTHON_CORE) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install --quiet --upgrade pip "setuptools>=77.0.3"
	$(CORE_VENV)/bin/python -m pip install --quiet --no-build-isolation -c constraints/core.txt -e ".[openvino,test]"
	$(CORE_VENV)/bin/python -m pip check
	@! $(CORE_VENV)/bin/python -c "import sparseml" 2>/dev/null || { echo "error: sparseml is installed in $(CORE_VENV); the core environment must not have it" >&2; exit 1; }
	touch $(CORE_STAMP)

install-core: $(CORE_STAMP)

test: lint test-full test-core

test-full: install
	$(BIN)/pytest

# every test that does not need the sparse extra, in an environment without it (deselected there, run in test-full)
test-core: install-core
	$(CORE_VENV)/bin/pytest -m "not sparse"

# ruff lint and format check, configured in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the demo study (experiments/studies/demo.yaml) on $$LIT_KD_CIFAR10, or on CIFAR-10 downloaded into data/cifar10
demo: install
	$(BIN)/lit-kd study experiments/studies/demo.yaml --out runs/demo

clean:
	rm -rf $(VENV) $(CORE_VENV) build *.egg-info
