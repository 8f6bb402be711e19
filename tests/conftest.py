"""Test set-up shared by every test file.

Triton reads TRITON_INTERPRET when its kernels are defined, so it is set here, before any test
imports fused_rnn's Triton backend: without a GPU the Triton kernels run in the interpreter.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
