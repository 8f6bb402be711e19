"""Multi-layer, bidirectional, dropout and variable-length logic over the recurrence ops.

Every function here works on time-major padded tensors ([T, B, features]) or, for packed input
where a backend has packed kernels (`runs_packed`), on a PackedSequence's rows ([N, features]:
projections, recurrence, reversal, dropout over the N real rows only); the modules handle
batch_first, unbatched input and PackedSequence around them. Per layer and direction:
`xw = x @ W_ih^T + biases` (one GEMM, through autograd) then one recurrence op call.

The functions are written once for eager mode, torch.compile and TorchScript: they call the ops as
`torch.ops.fused_rnn.*` (callable from TorchScript), take typed arguments, and never branch in
Python on tensor values (sequence lengths stay tensors), so Dynamo traces them without a break.
Eager calls go around the dispatcher (op_library.call_eagerly, and for a single step of the native
CPU backend fused_rnn.native_step) to the same implementations and formulas.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native_step, ops, packed_ops  # noqa: F401  (registers torch.ops.fused_rnn.*)
from .op_library import call_eagerly
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


def runs_packed(x: Tensor, backend: str) -> bool:
    """Whether packed input x (a PackedSequence's data) runs on its rows: on the CPU for a backend
    with packed kernels (fused_rnn.packed_ops). Elsewhere, and in TorchScript, it runs padded."""
    if torch.jit.is_scripting():
        return False
    return x.device.type == "cpu" and packed_ops.has_packed_kernels(backend)


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


def summed_bias(w: LayerWeights) -> Optional[Tensor]:
    """b_ih + b_hh [G*H], or None for a layer without biases."""
    b_ih, b_hh = w.b_ih, w.b_hh
    if b_ih is None or b_hh is None:
        return None
    return b_ih + b_hh


def projection_biases(mode: str, w: LayerWeights) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """The biases outside the recurrence, folded into one for xw [G*H] (None for a layer without
    biases), and GRU's b_hn [H] (else None)."""
    b_ih, b_hh = w.b_ih, w.b_hh
    if b_ih is None or b_hh is None:
        return None, None
    if mode != "GRU":
        return summed_bias(w), None
    hidden = w.w_hh.size(1)
    b_ir_iz, b_in = b_ih.split([2 * hidden, hidden])
    b_hr_hz, b_hn = b_hh.split([2 * hidden, hidden])
    return torch.cat([b_ir_iz + b_hr_hz, b_in]), b_hn


def input_projection(
    mode: str, x: Tensor, w: LayerWeights, backend: str = "reference"
) -> Tuple[Tensor, Optional[Tensor]]:
    """xw [T, B, G*H] with every bias outside the recurrence folded in, and GRU's b_hn [H]."""
    bias, b_hn = projection_biases(mode, w)
    return _linear(x, w.w_ih, bias, backend), b_hn


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
    batch_sizes: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One recurrence op call: -> hs [T, B, P], h_n [B, P], c_n [B, H] (LSTM) or None. With
    batch_sizes [T] (and no lengths) xw is packed rows [N, G*H] and hs [N, P] (fused_rnn.packed_ops).

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
    if batch_sizes is not None:
        return _packed_recurrence(mode, xw, w_hh, w_hr, b_hn, h0, c0, batch_sizes, differentiable, backend)
    # Eager calls skip the dispatcher's wrapper of the Python ops (op_library.call_eagerly): most
    # of the cost of a small single-step call beside its two GEMMs.
    if mode == "LSTM":
        assert c0 is not None
        if not differentiable:
            if not torch.jit.is_scripting():
                return call_eagerly(ops.lstm_inference, xw, w_hh, w_hr, h0, c0, lengths, backend)
            return torch.ops.fused_rnn.lstm_inference(xw, w_hh, w_hr, h0, c0, lengths, backend)
        if not torch.jit.is_scripting():
            hs, h_n, c_n, _, _ = call_eagerly(ops.lstm_forward, xw, w_hh, w_hr, h0, c0, lengths, backend)
        else:
            hs, h_n, c_n, _, _ = torch.ops.fused_rnn.lstm_forward(xw, w_hh, w_hr, h0, c0, lengths, backend)
        return hs, h_n, c_n
    if mode == "GRU":
        if not differentiable:
            if not torch.jit.is_scripting():
                hs, h_n = call_eagerly(ops.gru_inference, xw, w_hh, b_hn, h0, lengths, backend)
            else:
                hs, h_n = torch.ops.fused_rnn.gru_inference(xw, w_hh, b_hn, h0, lengths, backend)
            return hs, h_n, None
        if not torch.jit.is_scripting():
            hs, h_n, _ = call_eagerly(ops.gru_forward, xw, w_hh, b_hn, h0, lengths, backend)
        else:
            hs, h_n, _ = torch.ops.fused_rnn.gru_forward(xw, w_hh, b_hn, h0, lengths, backend)
        return hs, h_n, None
    if not torch.jit.is_scripting():
        hs, h_n = call_eagerly(ops.rnn_forward, xw, w_hh, h0, lengths, mode == "RNN_RELU", backend)
    else:
        hs, h_n = torch.ops.fused_rnn.rnn_forward(xw, w_hh, h0, lengths, mode == "RNN_RELU", backend)
    return hs, h_n, None


def _packed_recurrence(
    mode: str,
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    b_hn: Optional[Tensor],
    h0: Tensor,
    c0: Optional[Tensor],
    batch_sizes: Tensor,
    differentiable: bool,
    backend: str,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """recurrence's op call on packed rows xw [N, G*H] -> hs [N, P], h_n, c_n or None."""
    if mode == "LSTM":
        assert c0 is not None
        if not differentiable:
            return torch.ops.fused_rnn.lstm_packed_inference(xw, w_hh, w_hr, h0, c0, batch_sizes, backend)
        hs, h_n, c_n, _, _ = torch.ops.fused_rnn.lstm_packed_forward(xw, w_hh, w_hr, h0, c0, batch_sizes, backend)
        return hs, h_n, c_n
    if mode == "GRU":
        if not differentiable:
            hs, h_n = torch.ops.fused_rnn.gru_packed_inference(xw, w_hh, b_hn, h0, batch_sizes, backend)
            return hs, h_n, None
        hs, h_n, _ = torch.ops.fused_rnn.gru_packed_forward(xw, w_hh, b_hn, h0, batch_sizes, backend)
        return hs, h_n, None
    hs, h_n = torch.ops.fused_rnn.rnn_packed_forward(xw, w_hh, h0, batch_sizes, mode == "RNN_RELU", backend)
    return hs, h_n, None


def reverse_in_time(x: Tensor, lengths: Optional[Tensor], packing: Optional[Packing]) -> Tensor:
    """Each row reversed in time within its own length: packed rows x [N, F] by the permutation
    packing.reversed, else x [T, B, F] padded (reverse_padded)."""
    if packing is not None and x.dim() == 2:
        return x.index_select(0, packing.reversed)
    return reverse_padded(x, lengths)


def _projects_in_inference(x: Tensor, w: LayerWeights, h0: Tensor, c0: Optional[Tensor]) -> bool:
    """Whether an LSTM layer runs the inference op that takes x (fused_rnn::lstm_input_inference,
    whose backend may project inside the steps): nothing records a graph, and no autocast (which
    casts the projection apart from the recurrence). TorchScript keeps the projection outside."""
    if not torch.jit.is_scripting():
        if not torch.jit.is_tracing() and not torch.is_autocast_enabled(x.device.type):
            return not needs_grad([x, w.w_ih, w.w_hh, w.w_hr, w.b_ih, w.b_hh, h0, c0])
    return False


def run_direction(
    mode: str,
    x: Tensor,
    w: LayerWeights,
    h0: Tensor,
    c0: Optional[Tensor],
    lengths: Optional[Tensor],
    reverse: bool,
    backend: str,
    packing: Optional[Packing] = None,
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One layer in one direction over x [T, B, I] -> out [T, B, P], h_n [B, P], c_n [B, H]|None;
    with a packing and x the packed rows [N, I] (lengths None), out [N, P]."""
    batch_sizes: Optional[Tensor] = None
    if packing is not None and x.dim() == 2:
        batch_sizes = packing.batch_sizes
    if reverse:
        x = reverse_in_time(x, lengths, packing)
    step: Optional[Tuple[Tensor, Tensor, Optional[Tensor]]] = None
    if not torch.jit.is_scripting():
        if batch_sizes is None and lengths is None:
            step = native_step.run(mode, x, w, h0, c0, backend)
    if step is not None:
        out, h_n, c_n = step
    elif mode == "LSTM" and _projects_in_inference(x, w, h0, c0):
        assert c0 is not None
        if batch_sizes is None:
            out, h_n, c_n = torch.ops.fused_rnn.lstm_input_inference(
                x, w.w_ih, summed_bias(w), w.w_hh, w.w_hr, h0, c0, lengths, backend
            )
        else:
            out, h_n, c_n = torch.ops.fused_rnn.lstm_packed_input_inference(
                x, w.w_ih, summed_bias(w), w.w_hh, w.w_hr, h0, c0, batch_sizes, backend
            )
    else:
        xw, b_hn = input_projection(mode, x, w, backend)
        out, h_n, c_n = recurrence(mode, xw, w, b_hn, h0, c0, lengths, backend, batch_sizes)
    if reverse:
        out = reverse_in_time(out, lengths, packing)
    return out, h_n, c_n


def dropout_between_layers(x: Tensor, packing: Optional[Packing], p: float) -> Tensor:
    """Dropout of a layer's output as torch.nn draws it: over the whole tensor x [T, B, F], or, for
    packed input, over the packed rows (in packed order, so the same random draws as torch.nn's):
    x itself when it is the packed rows [N, F], else x's rows inside each length, the padding
    staying zero."""
    if packing is None or x.dim() == 2:
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
    or None -> output [T, B, D*P], h_n [L*D, B, P], c_n [L*D, B, H] or None. With a packing, x may
    be the packed rows [N, I] (see runs_packed): the output is then packed rows [N, D*P].
    Dropout applies to every layer's output but the last's, in training only.
    """
    lengths: Optional[Tensor] = None
    if packing is not None and x.dim() == 3:
        lengths = packing.lengths
    h_finals: List[Tensor] = []
    c_finals: List[Tensor] = []
    for index, directions in enumerate(layers):
        outputs: List[Tensor] = []
        for direction, w in enumerate(directions):
            slot = index * len(directions) + direction
            c_slot = None if c0 is None else c0[slot]
            out, h_n, c_n = run_direction(
                mode, x, w, h0[slot], c_slot, lengths, direction == 1, backend, packing
            )
            outputs.append(out)
            h_finals.append(h_n)
            if c_n is not None:
                c_finals.append(c_n)
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and training and index < len(layers) - 1:
            x = dropout_between_layers(x, packing, dropout)
    c_stack = torch.stack(c_finals) if c0 is not None else None
    return x, torch.stack(h_finals), c_stack
