# The two commands of the README: `make test` and `make demo`. Both install into .venv first when needed.
# PYTHON names the Python 3.11 interpreter to build .venv with (make PYTHON=/path/to/python3.11 test).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NM_DISABLE_ANALYTICS := 1

.PHONY: install test demo clean

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; lit-kd needs Python 3.11 (sparseml/deepsparse 1.8 support no newer one): install it or run make PYTHON=/path/to/python3.11 ..." >&2; exit 1; }
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
