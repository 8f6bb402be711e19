# The README's two commands. Both install what is missing into the Python in use, then run.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --no-build-isolation --no-deps

.PHONY: install test bench

# A failed build of the native extension only warns at install time (the package works without
# it), so the commands check it afterwards: without this, its tests would silently skip.
# FUSED_RNN_SKIP_NATIVE=1 skips both the build and the check.
install:
	$(PYTHON) scripts/ensure_deps.py
	$(PIP_INSTALL) -e .
	@if [ "$$FUSED_RNN_SKIP_NATIVE" != "1" ]; then \
		$(PYTHON) -c "import fused_rnn.native as n, sys; r = n.unavailable_reason('cpu'); sys.exit(r and 'native backend: ' + r)"; \
	fi

test: install
	$(PYTHON) -m pytest -q tests

bench: install
	$(PYTHON) -m fused_rnn.cli bench --quick
