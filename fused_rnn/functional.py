"""Multi-layer, bidirectional, dropout and variable-length logic over the recurrence ops.

Every function here works on time-major padded tensors ([T, B, features]); the modules handle
batch_first, unbatched input and PackedSequence around them. Per layer and direction:
`xw = x @ W_ih^T + biases` (one GEMM, through autograd) then one recurrence op call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


@dataclass
class LayerWeights:
    """The parameters of one layer and direction, in torch.nn's shapes.

    w_ih [G*H, I], w_hh [G*H, P], b_ih and b_hh [G*H] or None, w_hr [P, H] (LSTM proj_size) or None.
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor] = None
    b_hh: Optional[Tensor] = None
    w_hr: Optional[Tensor] = None


def reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each row of x [T, B, ...] in time within its own length (padding stays in place)."""
    if lengths is None:
        return x.flip(0)
    steps = x.shape[0]
    t = torch.arange(steps, device=x.device).unsqueeze(1)  # [T, 1]
    live = t < lengths.unsqueeze(0)  # [T, B]
    index = torch.where(live, lengths.unsqueeze(0) - 1 - t, t)  # [T, B]
    index = index.reshape(steps, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


def input_projection(
    mode: str, x: Tensor, w: LayerWeights, backend: str = "reference"
) -> tuple[Tensor, Optional[Tensor]]:
    """xw [T, B, G*H] with every bias outside the recurrence folded in, and GRU's b_hn [H]; the GEMM
    is the backend's where it has one (ops.project)."""
    if w.b_ih is None:
        return ops.project(x, w.w_ih, None, backend), None
    if mode != "GRU":
        return ops.project(x, w.w_ih, w.b_ih + w.b_hh, backend), None
    hidden = w.w_hh.shape[1]
    b_hr_hz, b_hn = w.b_hh[: 2 * hidden], w.b_hh[2 * hidden :]
    return ops.project(x, w.w_ih, w.b_ih + torch.cat([b_hr_hz, torch.zeros_like(b_hn)]), backend), b_hn


def recurrence(
    mode: str,
    xw: Tensor,
    w: LayerWeights,
    b_hn: Optional[Tensor],
    h0: Tensor,
    c0: Optional[Tensor],
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One recurrence op call: -> hs [T, B, P], h_n [B, P], c_n [B, H] (LSTM) or None.

    Under autocast the input projection comes out in the autocast dtype; the recurrence then runs
    in that dtype too (the ops take one dtype), with the weights and states cast to it.
    """
    w_hh, w_hr = w.w_hh, w.w_hr
    if torch.is_autocast_enabled(xw.device.type):
        w_hh, w_hr, b_hn, h0, c0 = (None if t is None else t.to(xw.dtype) for t in (w_hh, w_hr, b_hn, h0, c0))
    differentiable = ops.needs_grad(xw, w_hh, w_hr, b_hn, h0, c0)
    if mode == "LSTM":
        if not differentiable:
            return ops.lstm_inference(xw, w_hh, w_hr, h0, c0, lengths, backend)
        hs, h_n, c_n, _, _ = ops.lstm_forward(xw, w_hh, w_hr, h0, c0, lengths, backend)
        return hs, h_n, c_n
    if mode == "GRU":
        if not differentiable:
            hs, h_n = ops.gru_inference(xw, w_hh, b_hn, h0, lengths, backend)
            return hs, h_n, None
        hs, h_n, _ = ops.gru_forward(xw, w_hh, b_hn, h0, lengths, backend)
        return hs, h_n, None
    hs, h_n = ops.rnn_forward(xw, w_hh, h0, lengths, mode == "RNN_RELU", backend)
    return hs, h_n, None


def run_direction(
    mode: str,
    x: Tensor,
    w: LayerWeights,
    h0: Tensor,
    c0: Optional[Tensor],
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer in one direction over x [T, B, I] -> out [T, B, P], h_n [B, P], c_n [B, H]|None."""
    if reverse:
        x = reverse_padded(x, lengths)
    xw, b_hn = input_projection(mode, x, w, backend)
    out, h_n, c_n = recurrence(mode, xw, w, b_hn, h0, c0, lengths, backend)
    if reverse:
        out = reverse_padded(out, lengths)
    return out, h_n, c_n


def dropout_between_layers(x: Tensor, lengths: Optional[Tensor], p: float) -> Tensor:
    """Dropout of a layer's output x [T, B, F] as torch.nn draws it: over the whole tensor, or, for
    packed input (lengths [B], sorted decreasing as packing orders rows), over the live (t, b) rows
    in time-major order, which are the rows of the packed data. The other rows stay zero."""
    if lengths is None:
        return F.dropout(x, p=p, training=True)
    live = torch.arange(x.shape[0], device=x.device)[:, None] < lengths[None, :]  # [T, B]
    return x.masked_scatter(live[..., None], F.dropout(x[live], p=p, training=True))


def run_layers(
    mode: str,
    x: Tensor,
    layers: list[list[LayerWeights]],
    h0: Tensor,
    c0: Optional[Tensor],
    lengths: Optional[Tensor],
    dropout: float,
    training: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """A stack of layers, each with one or two directions.

    x [T, B, I], h0 [L*D, B, P], c0 [L*D, B, H] (LSTM) or None, lengths [B] on x's device or None
    -> output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None.
    Dropout applies to every layer's output but the last's, in training only.
    """
    h_finals, c_finals = [], []
    for index, directions in enumerate(layers):
        outputs = []
        for direction, w in enumerate(directions):
            slot = index * len(directions) + direction
            out, h_n, c_n = run_direction(
                mode, x, w, h0[slot], None if c0 is None else c0[slot], lengths, direction == 1, backend
            )
            outputs.append(out)
            h_finals.append(h_n)
            c_finals.append(c_n)
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        if dropout > 0 and training and index < len(layers) - 1:
            x = dropout_between_layers(x, lengths, dropout)
    c_stack = torch.stack(c_finals) if c0 is not None else None
    return x, torch.stack(h_finals), c_stack
