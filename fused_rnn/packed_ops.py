"""The recurrence custom ops on packed input: a PackedSequence's rows, every per-step tensor [N, .].

Each op takes the arguments of the padded op of the same cell (fused_rnn.ops), in the same places,
with the per-step tensors packed (step t's batch_sizes[t] rows, longest rows first, from row
sum(batch_sizes[:t]) on) and batch_sizes [T] (int64, on the CPU) in place of lengths:

    fused_rnn::rnn_packed_forward   (xw [N, H], w_hh, h0, batch_sizes, relu, backend)  -> hs [N, H], h_n
    fused_rnn::lstm_packed_forward  (xw [N, 4H], w_hh, w_hr, h0, c0, batch_sizes, backend)
                                    -> hs [N, P], h_n, c_n, cs [N, H], gates [N, 4H]
    fused_rnn::gru_packed_forward   (xw [N, 3H], w_hh, b_hn, h0, batch_sizes, backend)
                                    -> hs [N, H], h_n, gates [N, 4H]
    fused_rnn::*_packed_backward, fused_rnn::{lstm,gru}_packed_inference   likewise
    fused_rnn::lstm_packed_input_inference (x [N, I], w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes,
                                    backend): fused_rnn::lstm_input_inference on packed rows

A backend with packed kernels (`<cell>_packed_<direction>`: the native one, on the CPU) runs them.
Any other backend, and every backend off the CPU, runs its padded functions between a pad and a
pack (`padded_call`). Autograd is the padded ops' formulas (fused_rnn.ops) with the packed backward
ops, the recurrent weight gradient over the N packed rows, and double backward through the
reference between a pad and a pack.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import ops, reference
from .backends import constant_when_traced, get_backend
from .op_library import call_eagerly, define_op, register_autograd
from .packing import packed_from_padded, packing_of, padded_from_packed, previous_rows

# Per function of a backend (fused_rnn.reference's signatures): the positions of its per-step
# inputs, of lengths, of h0, and of its per-step outputs.
LAYOUTS = {
    "rnn_forward": ((0,), 3, 2, (0,)),
    "rnn_backward": ((0, 5), 4, 3, (0,)),
    "lstm_forward": ((0,), 5, 3, (0, 3, 4)),
    "lstm_inference": ((0,), 5, 3, (0,)),
    "lstm_backward": ((0, 8, 9, 10), 7, 5, (0,)),
    "gru_forward": ((0,), 4, 3, (0, 2)),
    "gru_inference": ((0,), 4, 3, (0,)),
    "gru_backward": ((0, 6, 7), 5, 4, (0, 1)),
}


def padded_call(function: Callable, name: str, args: Sequence) -> tuple:
    """function, the padded `name` of LAYOUTS, on packed args (batch_sizes in place of lengths):
    its per-step inputs padded with zeros ([N, F] -> [T, B, F]), lengths from batch_sizes, its
    per-step outputs packed. Differentiable (index_copy and index_select)."""
    inputs, lengths_at, h0_at, outputs = LAYOUTS[name]
    batch_sizes = args[lengths_at]
    packing = packing_of(args[inputs[0]], batch_sizes, args[h0_at].shape[0])
    steps = batch_sizes.shape[0]
    padded = [padded_from_packed(a, packing, steps) if i in inputs else a for i, a in enumerate(args)]
    padded[lengths_at] = packing.lengths
    results = function(*padded)
    return tuple(packed_from_padded(r, packing) if i in outputs else r for i, r in enumerate(results))


@constant_when_traced
def has_packed_kernels(backend: str) -> bool:
    """Whether `backend` ("auto" or a name) runs packed input on its own kernels on the CPU."""
    return hasattr(get_backend(backend, "cpu"), "lstm_packed_forward")


def _run(backend: str, name: str, args: list) -> tuple:
    """The backend's packed kernels for `name` ("lstm_forward", ...) on the CPU, else its padded
    function through padded_call."""
    device = args[0].device
    implementation = get_backend(backend, device)
    family, direction = name.split("_")
    packed = getattr(implementation, f"{family}_packed_{direction}", None)
    if packed is not None and device.type == "cpu":
        return tuple(packed(*args))
    if direction == "inference":
        outputs = 3 if family == "lstm" else 2  # hs, h_n and LSTM's c_n

        def padded(*padded_args):
            return ops.run_inference(backend, family, list(padded_args), outputs)

    else:
        padded = getattr(implementation, name)
    return padded_call(padded, name, args)


# ----------------------------------------------------------------------------------------------
# Validation: ranks, dtypes and devices like the padded ops', batch_sizes' values.
# ----------------------------------------------------------------------------------------------


def padded_view(xw: Tensor, batch_sizes: Tensor, h0: Tensor) -> Tensor:
    """Checks xw [N, X] and batch_sizes [T] and returns a [T, B, X] view of xw with strides 0 over
    time and batch (B: h0's rows) for the padded ops' argument checks, which read its shape, dtype
    and device only."""
    if batch_sizes.dtype != torch.int64 or batch_sizes.dim() != 1 or batch_sizes.device.type != "cpu":
        raise RuntimeError(
            "batch_sizes must be a 1-D torch.int64 tensor on the CPU, got "
            f"{batch_sizes.dim()}-D {batch_sizes.dtype} on {batch_sizes.device}"
        )
    if batch_sizes.shape[0] < 1:
        raise RuntimeError("batch_sizes must have at least one time step, got shape [0]")
    if xw.dim() != 2:
        raise RuntimeError(f"xw must be 2-D [N, G*H] (packed rows), got shape {list(xw.shape)}")
    batch = h0.shape[0] if h0.dim() > 0 else 0
    return xw.as_strided((batch_sizes.shape[0], batch, xw.shape[1]), (0, 0, xw.stride(1)))


def check_batch_sizes_values(batch_sizes: Tensor, batch: int, rows: int) -> None:
    """batch_sizes non-increasing, each >= 1, batch_sizes[0] = B and their sum N (reads the values:
    real tensors only)."""
    if int(batch_sizes.min()) < 1:
        raise RuntimeError(f"batch_sizes must be >= 1, got {batch_sizes.tolist()}")
    if bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise RuntimeError(f"batch_sizes must be non-increasing, got {batch_sizes.tolist()}")
    if int(batch_sizes[0]) != batch:
        raise RuntimeError(
            f"batch_sizes[0] must be the batch size B = {batch} (the rows of h0), got {int(batch_sizes[0])}"
        )
    if int(batch_sizes.sum()) != rows:
        raise RuntimeError(
            f"batch_sizes must sum to N = {rows} (the rows of xw), got sum {int(batch_sizes.sum())}"
        )


# ----------------------------------------------------------------------------------------------
# The ops.
# ----------------------------------------------------------------------------------------------


@define_op("fused_rnn::rnn_packed_forward")
def rnn_packed_forward(
    xw: Tensor, w_hh: Tensor, h0: Tensor, batch_sizes: Tensor, relu: bool, backend: str
) -> tuple[Tensor, Tensor]:
    ops.check_rnn_args(padded_view(xw, batch_sizes, h0), w_hh, h0, None)
    check_batch_sizes_values(batch_sizes, h0.shape[0], xw.shape[0])
    return _run(backend, "rnn_forward", [*ops.contiguous(xw, w_hh, h0), batch_sizes, relu])


@torch.library.register_fake(rnn_packed_forward)
def _(xw, w_hh, h0, batch_sizes, relu, backend):
    ops.check_rnn_args(padded_view(xw, batch_sizes, h0), w_hh, h0, None)
    return torch.empty_like(xw), torch.empty_like(h0)


@define_op("fused_rnn::rnn_packed_backward")
def rnn_packed_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    xw: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    batch_sizes: Tensor,
    hs: Tensor,
    relu: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """-> dxw [N, H], dh0 [B, H] (xw: see fused_rnn.ops.rnn_backward)."""
    grad_hs, grad_h_n, w_hh, h0, hs = ops.contiguous(grad_hs, grad_h_n, w_hh, h0, hs)
    return _run(backend, "rnn_backward", [grad_hs, grad_h_n, w_hh, h0, batch_sizes, hs, relu])


@torch.library.register_fake(rnn_packed_backward)
def _(grad_hs, grad_h_n, xw, w_hh, h0, batch_sizes, hs, relu, backend):
    return torch.empty_like(xw), torch.empty_like(h0)


def _check_lstm(xw, w_hh, w_hr, h0, c0, batch_sizes) -> None:
    ops.check_lstm_args(padded_view(xw, batch_sizes, h0), w_hh, w_hr, h0, c0, None)


@define_op("fused_rnn::lstm_packed_forward")
def lstm_packed_forward(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_lstm(xw, w_hh, w_hr, h0, c0, batch_sizes)
    check_batch_sizes_values(batch_sizes, h0.shape[0], xw.shape[0])
    return _run(backend, "lstm_forward", [*ops.contiguous(xw, w_hh, w_hr, h0, c0), batch_sizes])


@torch.library.register_fake(lstm_packed_forward)
def _(xw, w_hh, w_hr, h0, c0, batch_sizes, backend):
    _check_lstm(xw, w_hh, w_hr, h0, c0, batch_sizes)
    acc = reference.accumulation_dtype(xw.dtype)
    return (
        xw.new_empty(xw.shape[0], h0.shape[1]),
        torch.empty_like(h0),
        torch.empty_like(c0),
        xw.new_empty(xw.shape[0], c0.shape[1], dtype=acc),
        torch.empty_like(xw),
    )


@define_op("fused_rnn::lstm_packed_inference")
def lstm_packed_inference(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_packed_forward without cs and gates: -> hs [N, P], h_n [B, P], c_n [B, H]."""
    _check_lstm(xw, w_hh, w_hr, h0, c0, batch_sizes)
    check_batch_sizes_values(batch_sizes, h0.shape[0], xw.shape[0])
    return _run(backend, "lstm_inference", [*ops.contiguous(xw, w_hh, w_hr, h0, c0), batch_sizes])


@torch.library.register_fake(lstm_packed_inference)
def _(xw, w_hh, w_hr, h0, c0, batch_sizes, backend):
    _check_lstm(xw, w_hh, w_hr, h0, c0, batch_sizes)
    return xw.new_empty(xw.shape[0], h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0)


def _check_lstm_input(x, w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes) -> None:
    xw_like = ops.check_lstm_input_args(padded_view(x, batch_sizes, h0), w_ih, bias, w_hh)
    ops.check_lstm_args(xw_like, w_hh, w_hr, h0, c0, None)


@define_op("fused_rnn::lstm_packed_input_inference")
def lstm_packed_input_inference(
    x: Tensor,
    w_ih: Tensor,
    bias: Optional[Tensor],
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_packed_inference of xw = x @ w_ih^T + bias for packed rows x [N, I] (see
    fused_rnn::lstm_input_inference): -> hs [N, P], h_n [B, P], c_n [B, H]."""
    _check_lstm_input(x, w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes)
    implementation = get_backend(backend, x.device)
    if x.device.type != "cpu" or not hasattr(implementation, "lstm_packed_input_inference"):
        return lstm_packed_inference(ops.project(x, w_ih, bias, backend), w_hh, w_hr, h0, c0, batch_sizes, backend)
    check_batch_sizes_values(batch_sizes, h0.shape[0], x.shape[0])
    args = [*ops.contiguous(x, w_ih, bias, w_hh, w_hr, h0, c0), batch_sizes]
    return tuple(implementation.lstm_packed_input_inference(*args))


@torch.library.register_fake(lstm_packed_input_inference)
def _(x, w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes, backend):
    _check_lstm_input(x, w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes)
    return x.new_empty(x.shape[0], h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0)


@define_op("fused_rnn::lstm_packed_backward")
def lstm_packed_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor,
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> dxw [N, 4H], dh0 [B, P], dc0 [B, H], dw_hr [P, H] (shape [0] without projection)."""
    args = ops.contiguous(grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, batch_sizes, hs, cs, gates)
    return _run(backend, "lstm_backward", args)


@torch.library.register_fake(lstm_packed_backward)
def _(grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0, batch_sizes, hs, cs, gates, backend):
    dw_hr = xw.new_empty(0) if w_hr is None else torch.empty_like(w_hr)
    return torch.empty_like(xw), torch.empty_like(h0), torch.empty_like(c0), dw_hr


def _check_gru(xw, w_hh, b_hn, h0, batch_sizes) -> None:
    ops.check_gru_args(padded_view(xw, batch_sizes, h0), w_hh, b_hn, h0, None)


@define_op("fused_rnn::gru_packed_forward")
def gru_packed_forward(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    batch_sizes: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_gru(xw, w_hh, b_hn, h0, batch_sizes)
    check_batch_sizes_values(batch_sizes, h0.shape[0], xw.shape[0])
    return _run(backend, "gru_forward", [*ops.contiguous(xw, w_hh, b_hn, h0), batch_sizes])


@torch.library.register_fake(gru_packed_forward)
def _(xw, w_hh, b_hn, h0, batch_sizes, backend):
    _check_gru(xw, w_hh, b_hn, h0, batch_sizes)
    return xw.new_empty(xw.shape[0], h0.shape[1]), torch.empty_like(h0), xw.new_empty(xw.shape[0], 4 * h0.shape[1])


@define_op("fused_rnn::gru_packed_inference")
def gru_packed_inference(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    batch_sizes: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """gru_packed_forward without gates: -> hs [N, H], h_n [B, H]."""
    _check_gru(xw, w_hh, b_hn, h0, batch_sizes)
    check_batch_sizes_values(batch_sizes, h0.shape[0], xw.shape[0])
    return _run(backend, "gru_inference", [*ops.contiguous(xw, w_hh, b_hn, h0), batch_sizes])


@torch.library.register_fake(gru_packed_inference)
def _(xw, w_hh, b_hn, h0, batch_sizes, backend):
    _check_gru(xw, w_hh, b_hn, h0, batch_sizes)
    return xw.new_empty(xw.shape[0], h0.shape[1]), torch.empty_like(h0)


@define_op("fused_rnn::gru_packed_backward")
def gru_packed_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    batch_sizes: Tensor,
    hs: Tensor,
    gates: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> dxw [N, 3H], d_hn [N, H], dh0 [B, H]."""
    grad_hs, grad_h_n, w_hh, b_hn, h0, hs, gates = ops.contiguous(grad_hs, grad_h_n, w_hh, b_hn, h0, hs, gates)
    return _run(backend, "gru_backward", [grad_hs, grad_h_n, w_hh, b_hn, h0, batch_sizes, hs, gates])


@torch.library.register_fake(gru_packed_backward)
def _(grad_hs, grad_h_n, xw, w_hh, b_hn, h0, batch_sizes, hs, gates, backend):
    return torch.empty_like(xw), torch.empty_like(hs), torch.empty_like(h0)


# ----------------------------------------------------------------------------------------------
# Autograd: the padded ops' formulas in the packed layout.
# ----------------------------------------------------------------------------------------------


def packed_weight_grad(
    blocks: list[Tensor], h0: Tensor, hs: Tensor, batch_sizes: Tensor, backend: str
) -> Tensor:
    """For each block d_gates [N, G_i] the sum over the packed rows of d_gates[n]^T h[n's previous
    step] (h0 [B, P], hs [N, P]) -> [sum G_i, P]. Step 0's rows (the first B) take h0; the others
    the row of the step before, gathered once for every block ([N - B, P]; no rows when every row
    has length 1, and no branch on that, since B is data under torch.compile)."""
    batch, rows = h0.shape[0], hs.shape[0]
    previous = hs.index_select(0, previous_rows(batch_sizes, batch, rows).to(hs.device))
    grads = []
    for d_gates in ops.joined_when_cheaper(blocks, hs.shape[1]):
        first = call_eagerly(ops.linear, d_gates[:batch].t(), h0.t(), None, backend)
        grads.append(call_eagerly(ops.linear, d_gates[batch:].t(), previous.t(), first, backend))
    return grads[0] if len(grads) == 1 else torch.cat(grads)


register_autograd(
    rnn_packed_forward,
    ops.rnn_grad_through(rnn_packed_backward, packed_weight_grad),
    setup_context=ops.rnn_setup_context,
)
register_autograd(
    lstm_packed_forward,
    ops.lstm_grad_through(lstm_packed_backward, packed_weight_grad),
    setup_context=ops.lstm_setup_context,
)
register_autograd(
    gru_packed_forward,
    ops.gru_grad_through(gru_packed_backward, packed_weight_grad),
    setup_context=ops.gru_setup_context,
)
register_autograd(
    rnn_packed_backward, ops.rnn_backward_grad_in(padded_call), setup_context=ops.rnn_backward_setup_context
)
register_autograd(
    lstm_packed_backward, ops.lstm_backward_grad_in(padded_call), setup_context=ops.lstm_backward_setup_context
)
register_autograd(
    gru_packed_backward, ops.gru_backward_grad_in(padded_call), setup_context=ops.gru_backward_setup_context
)
