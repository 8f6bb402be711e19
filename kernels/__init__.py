"""Triton backend of fused_rnn (installed as fused_rnn.kernels)."""

import os

import torch


def unavailable_reason(device: torch.device):
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"Triton is not installed ({error})"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"Triton runs on CUDA devices, or on the CPU with TRITON_INTERPRET=1; got {device.type}"
