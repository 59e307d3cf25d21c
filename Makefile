# The two commands of the README: `make test` and `make demo`. Both install into .venv first when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NM_DISABLE_ANALYTICS := 1

.PHONY: install test demo clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77.0.3,<81"
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/pytest

# the demo study (experiments/studies/demo.yaml) on $$LIT_KD_CIFAR10, or on CIFAR-10 downloaded into data/cifar10
demo: install
	$(BIN)/lit-kd study experiments/studies/demo.yaml --out runs/demo

clean:
	rm -rf $(VENV) build *.egg-info
