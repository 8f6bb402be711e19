# The README's two commands. Both install what is missing into the Python in use, then run.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --no-build-isolation --no-deps

.PHONY: install test bench

install:
	$(PYTHON) scripts/ensure_deps.py
	$(PIP_INSTALL) -e .

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) -m fused_rnn.cli bench --quick
