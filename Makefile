# The two commands of the README: `make test` and `make demo`. Both install into .venv first when needed.
# PYTHON names the Python 3.11 interpreter to build .venv with (default python3.11 on the PATH):
#   make PYTHON=/path/to/python3.11 test
# `make help` lists the targets.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NM_DISABLE_ANALYTICS := 1

.PHONY: help install lint test demo clean
.DEFAULT_GOAL := help

help:
	@echo "make install   create $(VENV) with $(PYTHON) and install lit-kd with its test extras (once; again when setup.cfg or pyproject.toml change)"
	@echo "make lint      install, then ruff check and ruff format --check (configured in pyproject.toml)"
	@echo "make test      install, then lint and run pytest"
	@echo "make demo      install, then run the demo study (experiments/studies/demo.yaml) into runs/demo"
	@echo "make clean     remove $(VENV) and build outputs"
	@echo "PYTHON=/path/to/python3.11   the interpreter $(VENV) is built with (now: $(PYTHON)); lit-kd needs Python 3.11"

# the interpreter must run and be 3.11 (a pyenv shim without that version installed is found on the PATH but fails)
$(STAMP): setup.cfg pyproject.toml
	@version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	if [ "$$version" != "3.11" ]; then \
		if [ -z "$$version" ]; then found="not found (or does not run)"; else found="is Python $$version"; fi; \
		echo "error: PYTHON=$(PYTHON) $$found; lit-kd needs Python 3.11 (sparseml/deepsparse 1.8 support no newer one): install it, or run make PYTHON=/path/to/python3.11 $(or $(MAKECMDGOALS),install)" >&2; \
		exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77.0.3,<81"
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

test: install lint
	$(BIN)/pytest

# ruff lint and format check, configured in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the demo study (experiments/studies/demo.yaml) on $$LIT_KD_CIFAR10, or on CIFAR-10 downloaded into data/cifar10
demo: install
	$(BIN)/lit-kd study experiments/studies/demo.yaml --out runs/demo

clean:
	rm -rf $(VENV) build *.egg-info
