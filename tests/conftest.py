"""Test set-up shared by every test file.

Triton reads TRITON_INTERPRET when its kernels are defined, so it is set here, before any test
imports fused_rnn's Triton backend: without a GPU the Triton kernels run in the interpreter.

Tests that need a CUDA device carry the `cuda` marker (pyproject.toml): they are collected on every
machine and skipped, with that reason, where torch sees no CUDA device.
"""

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The native CPU backend picks its GEMMs and whether LSTM inference projects inside the steps by
# the CPU's vendor (csrc/cpu/gemm.h, mkl_tuned_cpu). The tests that assert a path are written for
# the rules off Intel CPUs, which run every kernel; test_native_build checks the setting both ways.
os.environ.setdefault("FUSED_RNN_MKL_TUNED_CPU", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_dynamo_cache():
    """Each test compiles from scratch: Dynamo caches compiled frames per code object (all module
    instances share fused_rnn's forward), and the entries of earlier tests would otherwise count
    towards its recompile limit, which fullgraph=True turns into an error."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    yield
