# The README's two commands. Both install what is missing into the Python in use, then run.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --no-build-isolation --no-deps

.PHONY: install test bench gpu-check

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

# Everything owed on a GPU in one command (README, "GPU check"). It installs nothing and needs no
# network: it builds fused_rnn._C in place with what the machine has. Results in $GPU_CHECK_OUT
# (default ./gpu-check-results); without a CUDA device it records that and exits 0.
gpu-check:
	$(PYTHON) scripts/gpu_check.py
