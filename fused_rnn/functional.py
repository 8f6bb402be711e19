"""Multi-layer, bidirectional, dropout and variable-length logic over the recurrence ops.

Every function here works on time-major padded tensors ([T, B, features]); the modules handle
batch_first, unbatched input and PackedSequence around them. Per layer and direction:
`xw = x @ W_ih^T + biases` (one GEMM, through autograd) then one recurrence op call.

The functions are written once for eager mode, torch.compile and TorchScript: they call the ops as
`torch.ops.fused_rnn.*` (callable from TorchScript), take typed arguments, and never branch in
Python on tensor values (sequence lengths stay tensors), so Dynamo traces them without a break.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops, packed_ops  # noqa: F401  (registers torch.ops.fused_rnn.*)
from .packing import Packing, packed_from_padded, padded_from_packed

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


class LayerWeights(NamedTuple):
    """The parameters of one layer and direction, in torch.nn's shapes.

    w_ih [G*H, I], w_hh [G*H, P], b_ih and b_hh [G*H] or None, w_hr [P, H] (LSTM proj_size) or None.
    """

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Optional[Tensor]
    b_hh: Optional[Tensor]
    w_hr: Optional[Tensor]


def reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse each row of x [T, B, F] in time within its own length (padding stays in place)."""
    if lengths is None:
        return x.flip(0)
    t = torch.arange(x.size(0), device=x.device).unsqueeze(1)  # [T, 1]
    live = t < lengths.unsqueeze(0)  # [T, B]
    index = torch.where(live, lengths.unsqueeze(0) - 1 - t, t)  # [T, B]
    return x.gather(0, index.unsqueeze(2).expand_as(x))


def _linear(x: Tensor, w: Tensor, b: Optional[Tensor], backend: str) -> Tensor:
    """F.linear(x, w, b), through the backend's own GEMM where it has one (ops.project); TorchScript
    runs F.linear."""
    if torch.jit.is_scripting():
        return F.linear(x, w, b)
    return ops.project(x, w, b, backend)


def input_projection(
    mode: str, x: Tensor, w: LayerWeights, backend: str = "reference"
) -> Tuple[Tensor, Optional[Tensor]]:
    """xw [T, B, G*H] with every bias outside the recurrence folded in, and GRU's b_hn [H]."""
    b_ih, b_hh = w.b_ih, w.b_hh
    if b_ih is None or b_hh is None:
        return _linear(x, w.w_ih, None, backend), None
    if mode != "GRU":
        return _linear(x, w.w_ih, b_ih + b_hh, backend), None
    hidden = w.w_hh.size(1)
    b_hn = b_hh[2 * hidden :]
    folded = b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros_like(b_hn)])
    return _linear(x, w.w_ih, folded, backend), b_hn


def needs_grad(tensors: List[Optional[Tensor]]) -> bool:
    """Whether autograd will record an op on `tensors`: the choice between the forward ops and the
    inference ops."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def _to_dtype(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def recurrence(
    mode: str,
    xw: Tensor,
    w: LayerWeights,
    b_hn: Optional[Tensor],
    h0: Tensor,
    c0: Optional[Tensor],
    lengths: Optional[Tensor],
    backend: str,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One recurrence op call: -> hs [T, B, P], h_n [B, P], c_n [B, H] (LSTM) or None.

    Under autocast the input projection comes out in the autocast dtype; the recurrence then runs
    in that dtype too (the ops take one dtype), with the weights and states cast to it.
    """
    w_hh, w_hr = w.w_hh, w.w_hr
    if not torch.jit.is_scripting():
        if torch.is_autocast_enabled(xw.device.type):
            w_hh, h0 = w_hh.to(xw.dtype), h0.to(xw.dtype)
            w_hr, b_hn, c0 = _to_dtype(w_hr, xw.dtype), _to_dtype(b_hn, xw.dtype), _to_dtype(c0, xw.dtype)
    # A trace records one path whatever the grad mode it is later run in: the differentiable one.
    differentiable = torch.jit.is_tracing() or needs_grad([xw, w_hh, w_hr, b_hn, h0, c0])
    if mode == "LSTM":
        assert c0 is not None
        if not differentiable:
            return torch.ops.fused_rnn.lstm_inference(xw, w_hh, w_hr, h0, c0, lengths, backend)
        hs, h_n, c_n, _, _ = torch.ops.fused_rnn.lstm_forward(xw, w_hh, w_hr, h0, c0, lengths, backend)
        return hs, h_n, c_n
    if mode == "GRU":
        if not differentiable:
            hs, h_n = torch.ops.fused_rnn.gru_inference(xw, w_hh, b_hn, h0, lengths, backend)
            return hs, h_n, None
        hs, h_n, _ = torch.ops.fused_rnn.gru_forward(xw, w_hh, b_hn, h0, lengths, backend)
        return hs, h_n, None
    hs, h_n = torch.ops.fused_rnn.rnn_forward(xw, w_hh, h0, lengths, mode == "RNN_RELU", backend)
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
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer in one direction over x [T, B, I] -> out [T, B, P], h_n [B, P], c_n [B, H]|None."""
    if reverse:
        x = reverse_padded(x, lengths)
    xw, b_hn = input_projection(mode, x, w, backend)
    out, h_n, c_n = recurrence(mode, xw, w, b_hn, h0, c0, lengths, backend)
    if reverse:
        out = reverse_padded(out, lengths)
    return out, h_n, c_n


def dropout_between_layers(x: Tensor, packing: Optional[Packing], p: float) -> Tensor:
    """Dropout of a layer's output x [T, B, F] as torch.nn draws it: over the whole tensor, or, for
    packed input, over the packed rows (in packed order, so the same random draws as torch.nn's);
    the padding stays zero."""
    if packing is None:
        return F.dropout(x, p=p, training=True)
    rows = F.dropout(packed_from_padded(x, packing), p=p, training=True)
    return padded_from_packed(rows, packing, x.size(0))


def run_layers(
    mode: str,
    x: Tensor,
    layers: List[List[LayerWeights]],
    h0: Tensor,
    c0: Optional[Tensor],
    packing: Optional[Packing],
    dropout: float,
    training: bool,
    backend: str,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """A stack of layers, each with one or two directions.

    x [T, B, I], h0 [L*D, B, P], c0 [L*D, B, H] (LSTM) or None, packing of a PackedSequence input
    or None -> output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None.
    Dropout applies to every layer's output but the last's, in training only.
    """
    lengths = None if packing is None else packing.lengths
    h_finals: List[Tensor] = []
    c_finals: List[Tensor] = []
    for index, directions in enumerate(layers):
        outputs: List[Tensor] = []
        for direction, w in enumerate(directions):
            slot = index * len(directions) + direction
            c_slot = None if c0 is None else c0[slot]
            out, h_n, c_n = run_direction(mode, x, w, h0[slot], c_slot, lengths, direction == 1, backend)
            outputs.append(out)
            h_finals.append(h_n)
            if c_n is not None:
                c_finals.append(c_n)
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        if dropout > 0 and training and index < len(layers) - 1:
            x = dropout_between_layers(x, packing, dropout)
    c_stack = torch.stack(c_finals) if c0 is not None else None
    return x, torch.stack(h_finals), c_stack
