"""The `triton` backend of fused_rnn (installed as fused_rnn.kernels): fused recurrence kernels.

The six functions of fused_rnn.reference with the same signatures, outputs and saved tensors
(rnn/lstm/gru forward and backward), the inference variants of the LSTM and GRU forward (no saved
tensors written; see fused_rnn.ops), plus `unavailable_reason(device)`. Per cell and direction of
time one kernel runs the time loop itself: the hidden units are split across programs, each program
loads its slice of W_hh (all gate rows of its units) once and keeps it for every step, and the
programs exchange the state once per step (kernels.launch). Gate math, cell states and
accumulation are float32; inputs float32, float16 or bfloat16.

Modes (kernels.launch): step mode, one launch per time step, is the default; a grid of one program
runs the whole sequence in one launch. The persistent mode (one launch for the whole sequence, a
grid barrier through a global atomic counter between steps) is opt-in with
FUSED_RNN_TRITON_PERSISTENT=1 on CUDA and is not yet verified on a GPU. LSTM with a projection
(proj_size) always runs per step with the projection as a torch GEMM between launches.

On a CPU the kernels run in Triton's interpreter, which must be enabled (TRITON_INTERPRET=1) before
this package is imported; there the persistent mode is never used (the interpreter runs programs
one after another, so an in-kernel barrier would deadlock) and tl.dot operands are float32.
"""

from __future__ import annotations

from typing import Optional

import torch

try:
    import triton  # noqa: F401
except ImportError as error:
    _IMPORT_ERROR: Optional[str] = f"Triton could not be imported ({error})"
else:
    _IMPORT_ERROR = None
    from .gru import gru_backward, gru_forward, gru_inference
    from .launch import INTERPRETING
    from .lstm import lstm_backward, lstm_forward, lstm_inference
    from .rnn import rnn_backward, rnn_forward


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernels can run on `device` now, else a sentence saying why not."""
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if INTERPRETING:
            return None
        return (
            "Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before "
            "importing fused_rnn"
        )
    return f"Triton kernels run on CUDA devices (or on the CPU in the interpreter), not on {device.type}"


__all__ = [
    "gru_backward",
    "gru_forward",
    "gru_inference",
    "lstm_backward",
    "lstm_forward",
    "lstm_inference",
    "rnn_backward",
    "rnn_forward",
    "unavailable_reason",
]
