"""The `triton` backend of fused_rnn (installed as fused_rnn.kernels): fused recurrence kernels.

The six functions of fused_rnn.reference with the same signatures, outputs and saved tensors
(rnn/lstm/gru forward and backward), the inference variants of the LSTM and GRU forward (no saved
tensors written; see fused_rnn.ops), plus `unavailable_reason(device)`; kernels.attention holds the
attention functions. Inputs float64, float32, float16 or bfloat16; gate math, cell states and
accumulation in float32 (float64 for float64).

Per cell and direction of time one kernel runs the whole sequence. The hidden units are split
across programs; each holds its slice of W_hh as the A operand of its recurrent product, with the
batch as N (kernels.product; resident in shared memory, or streamed from L2 where the slices do
not fit on-chip), and the programs of a batch block exchange the state once per step through
words tagged with the step that wrote them (kernels.exchange; float64 meets at a grid barrier,
kernels.barrier). kernels.plan chooses the tiles from the shape, dtype and device limits;
kernels.launch runs the plan whose compiled kernel fits: on CUDA one cooperative launch for the
whole sequence when the grid is resident by the kernel's own occupancy; where only some batch
blocks are, one cooperative launch per group of batch blocks, one after another; one launch per
phase only where not one batch block is (with a warning naming the shape, once).

On a CPU the kernels run in Triton's interpreter, which must be enabled (TRITON_INTERPRET=1) before
this package is imported; there tl.dot operands are float32 (it computes bfloat16 dots wrongly)
and a launch runs all phases at once only when each batch block is one program (the interpreter
runs programs one after another).
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
