"""Argument checks of the Triton backend's entry points.

The forward checks are fused_rnn.ops's (called again here: the backend functions can be called
directly); the backward ops have none in fused_rnn.ops, so their arguments are checked here against
the saved `hs`, which fixes T, B and the dtype and device.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fused_rnn import ops
from fused_rnn.reference import accumulation_dtype

SUPPORTED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_dtype(name: str, tensor: Tensor) -> None:
    """The kernels take every floating dtype torch.nn's recurrent modules take."""
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            f"the triton backend supports {name} of dtype float64, float32, float16 or bfloat16, "
            f"got {tensor.dtype}; use backend='reference' for other dtypes"
        )


def _check_saved(hs: Tensor, named: dict[str, tuple[Optional[Tensor], Sequence[int], torch.dtype]]) -> None:
    for name, (tensor, shape, dtype) in named.items():
        if tensor is None:
            continue
        if tensor.dtype != dtype:
            raise RuntimeError(f"{name} must have dtype {dtype}, got {tensor.dtype}")
        if tensor.device != hs.device:
            raise RuntimeError(f"{name} must be on {hs.device} (the device of hs), got {tensor.device}")
        ops.expect_shape(name, tensor, shape)


def _steps_and_batch(hs: Tensor) -> tuple[int, int]:
    if hs.dim() != 3 or hs.shape[0] < 1:
        raise RuntimeError(f"hs must have shape [T, B, P] with T >= 1, got {list(hs.shape)}")
    check_dtype("hs", hs)
    return hs.shape[0], hs.shape[1]


def check_rnn_backward_args(
    grad_hs: Tensor, grad_h_n: Tensor, w_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], hs: Tensor
) -> None:
    steps, batch = _steps_and_batch(hs)
    hidden, dtype = hs.shape[2], hs.dtype
    _check_saved(
        hs,
        {
            "grad_hs": (grad_hs, [steps, batch, hidden], dtype),
            "grad_h_n": (grad_h_n, [batch, hidden], dtype),
            "w_hh": (w_hh, [hidden, hidden], dtype),
            "h0": (h0, [batch, hidden], dtype),
        },
    )
    ops.check_rnn_args(hs, w_hh, h0, lengths)


def check_lstm_backward_args(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
) -> None:
    steps, batch = _steps_and_batch(hs)
    state, hidden, dtype = hs.shape[2], c0.shape[-1], hs.dtype
    _check_saved(
        hs,
        {
            "grad_hs": (grad_hs, [steps, batch, state], dtype),
            "grad_h_n": (grad_h_n, [batch, state], dtype),
            "grad_c_n": (grad_c_n, [batch, hidden], dtype),
            "cs": (cs, [steps, batch, hidden], accumulation_dtype(dtype)),
            "gates": (gates, [steps, batch, 4 * hidden], dtype),
        },
    )
    ops.check_lstm_args(gates, w_hh, w_hr, h0, c0, lengths)


def check_gru_backward_args(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    gates: Tensor,
) -> None:
    steps, batch = _steps_and_batch(hs)
    hidden, dtype = hs.shape[2], hs.dtype
    _check_saved(
        hs,
        {
            "grad_hs": (grad_hs, [steps, batch, hidden], dtype),
            "grad_h_n": (grad_h_n, [batch, hidden], dtype),
            "gates": (gates, [steps, batch, 4 * hidden], dtype),
        },
    )
    ops.check_gru_args(gates[:, :, : 3 * hidden], w_hh, b_hn, h0, lengths)
