"""One time step of a padded batch on the native CPU backend, called directly: a cell, or a module
called one step at a time (a decoder). Such a step's math is two small GEMMs and a pointwise pass,
which cost less than the general path's Python around them (the op layer's checks and backend
resolutions, and under autograd five to eight graph nodes: the bias fold's split, add and cat, the
projection, the recurrence). Here the backend's functions are called as the op layer calls them
(ops.run_inference, ops.project, the forward ops and their autograd formulas), so the results and
the gradients are the general path's, bit for bit:

- nothing records (no_grad, or no argument requires grad): unrecorded_step, no graph at all;
- autograd records: recorded_step, one graph node (RecordedNativeStep) whose backward applies the
  ops' formulas, and under create_graph recomputes the step through the general path for the
  gradients' own graph (double backward).

The modules have checked the arguments as torch.nn does, and the C++ ops check them again.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import functional, ops
from .backends import get_backend, resolve_backend
from .op_library import needs_dispatcher

StepResult = Tuple[Tensor, Tensor, Optional[Tensor]]


def run(
    mode: str, x: Tensor, w: "functional.LayerWeights", h0: Tensor, c0: Optional[Tensor], backend: str
) -> Optional[StepResult]:
    """run_direction's result for one time step x [1, B, I] (lengths None, no packing) on the
    native CPU backend -> out [1, B, P], h_n [B, P], c_n [B, H] or None; None where this does not
    apply (several steps, another device or backend, LSTM proj_size, autocast, states of another
    dtype, or a trace, a compilation, the profiler or a dispatch mode, which see the ops)."""
    if x.shape[0] != 1 or x.device.type != "cpu" or w.w_hr is not None or needs_dispatcher():
        return None
    if torch.is_autocast_enabled("cpu") or resolve_backend(backend, x.device) != "native":
        return None
    if h0.dtype != x.dtype or (c0 is not None and c0.dtype != x.dtype):
        return None  # the op layer's error
    if torch.is_grad_enabled() and torch._C._any_requires_grad(x, *w, h0, c0):
        return recorded_step(mode, x, w, h0, c0)
    return unrecorded_step(mode, x, w, h0, c0)


def unrecorded_step(
    mode: str, x: Tensor, w: "functional.LayerWeights", h0: Tensor, c0: Optional[Tensor]
) -> StepResult:
    """run's step where nothing records: the inference functions (an LSTM projects inside its
    step, as the general path's lstm_input_inference does)."""
    native = get_backend("native")
    if mode == "LSTM":
        assert c0 is not None
        operands = ops.contiguous(x, w.w_ih, functional.summed_bias(w), w.w_hh, None, h0, c0, None)
        hs, h_n, c_n = native.lstm_input_inference(*operands)
        return hs, h_n, c_n
    xw, b_hn = _projection(native, mode, w, x.reshape(-1, x.shape[-1]))
    if mode == "GRU":
        hs, h_n = native.gru_inference(*ops.contiguous(xw, w.w_hh, b_hn, h0, None))
    else:
        hs, h_n = native.rnn_forward(*ops.contiguous(xw, w.w_hh, h0, None), mode == "RNN_RELU")
    return hs, h_n, None


def _projection(
    native, mode: str, w: "functional.LayerWeights", x2d: Tensor
) -> Tuple[Tensor, Optional[Tensor]]:
    """xw [1, B, G*H] of x2d [B, I] with the biases folded as functional.projection_biases folds
    them, and GRU's b_hn [H] (else None)."""
    bias, b_hn = functional.projection_biases(mode, w)
    return native.linear(x2d, w.w_ih, bias).unsqueeze(0), b_hn


def recorded_step(
    mode: str, x: Tensor, w: "functional.LayerWeights", h0: Tensor, c0: Optional[Tensor]
) -> StepResult:
    """run's step where autograd records: one RecordedNativeStep node."""
    outputs = RecordedNativeStep.apply(mode, x, w.w_ih, w.b_ih, w.w_hh, w.b_hh, h0, c0)
    if mode == "LSTM":
        return outputs
    hs, h_n = outputs
    return hs, h_n, None


class RecordedNativeStep(torch.autograd.Function):
    """(mode, x [1, B, I], w_ih, b_ih, w_hh, b_hh, h0 [B, H], c0 [B, H] or None) -> hs [1, B, H],
    h_n [B, H] (and c_n [B, H] for LSTM): the general path's projection (biases folded as
    functional.projection_biases folds them) and forward op, as one graph node."""

    @staticmethod
    def forward(ctx, mode, x, w_ih, b_ih, w_hh, b_hh, h0, c0):
        native = get_backend("native")
        w = functional.LayerWeights(w_ih, w_hh, b_ih, b_hh, None)
        x2d = x.reshape(-1, x.shape[-1])
        xw, b_hn = _projection(native, mode, w, x2d)
        if mode == "LSTM":
            hs, h_n, c_n, cs, gates = native.lstm_forward(*ops.contiguous(xw, w_hh, None, h0, c0, None))
            recurrence_saved = (cs, gates)
            outputs = (hs, h_n, c_n)
        elif mode == "GRU":
            hs, h_n, gates = native.gru_forward(*ops.contiguous(xw, w_hh, b_hn, h0, None))
            recurrence_saved = (b_hn, gates)
            outputs = (hs, h_n)
        else:
            hs, h_n = native.rnn_forward(*ops.contiguous(xw, w_hh, h0, None), mode == "RNN_RELU")
            recurrence_saved = ()
            outputs = (hs, h_n)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w_ih, b_ih, w_hh, b_hh, h0, c0, x2d, xw, hs, *recurrence_saved)
        ctx.mode = mode
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():
            return (None, *_gradients_through_the_general_path(ctx, grads))
        return (None, *_gradients_by_the_formulas(ctx, grads))


def _gradients_by_the_formulas(ctx, grads) -> tuple:
    """First-order gradients of (x, w_ih, b_ih, w_hh, b_hh, h0, c0): the forward op's formula
    (ops.*_grads), the projection's (ops.linear_grads, the bias's sum) and the bias fold's
    (functional.projection_bias_grads), on the tensors the general path would have saved."""
    mode, needs = ctx.mode, ctx.needs_input_grad
    x, w_ih, b_ih, w_hh, b_hh, h0, c0, x2d, xw, hs, *recurrence_saved = ctx.saved_tensors
    weight_grad, backend = ops.padded_weight_grad, "native"
    dc0 = db_hn = None
    if mode == "LSTM":
        cs, gates = recurrence_saved
        saved = (xw, w_hh, None, h0, c0, None, hs, cs, gates)
        dxw, dw_hh, _, dh0, dc0 = ops.lstm_grads(ops.lstm_backward, weight_grad, saved, grads, needs[4], backend)
    elif mode == "GRU":
        b_hn, gates = recurrence_saved
        saved = (xw, w_hh, b_hn, h0, None, hs, gates)
        needs_db_hn = needs[5] and b_hn is not None
        dxw, dw_hh, db_hn, dh0 = ops.gru_grads(
            ops.gru_backward, weight_grad, saved, grads, needs[4], needs_db_hn, backend
        )
    else:
        saved = (xw, w_hh, h0, None, hs)
        dxw, dw_hh, dh0 = ops.rnn_grads(
            ops.rnn_backward, weight_grad, saved, grads, needs[4], mode == "RNN_RELU", backend
        )
    dxw2d = dxw.view(x2d.shape[0], -1)
    dx2d, dw_ih = ops.linear_grads(dxw2d, x2d, w_ih, needs[1], needs[2], backend)
    db_ih = db_hh = None
    if b_ih is not None and b_hh is not None and (needs[3] or needs[5]):
        db_ih, db_hh = functional.projection_bias_grads(mode, dxw2d.sum(0), db_hn)
        db_ih, db_hh = (db_ih if needs[3] else None), (db_hh if needs[5] else None)
    dx = None if dx2d is None else dx2d.view(x.shape)
    return dx, dw_ih, db_ih, dw_hh, db_hh, dh0, dc0


def _gradients_through_the_general_path(ctx, grads) -> list:
    """The gradients of (x, w_ih, b_ih, w_hh, b_hh, h0, c0) with a graph of their own (backward
    under create_graph): the step recomputed through the general path (input projection and
    forward op, each with its registered autograd formula), differentiated by autograd."""
    mode, needs = ctx.mode, ctx.needs_input_grad[1:]
    inputs = ctx.saved_tensors[:7]
    x, w_ih, b_ih, w_hh, b_hh, h0, c0 = inputs
    w = functional.LayerWeights(w_ih, w_hh, b_ih, b_hh, None)
    xw, b_hn = functional.input_projection(mode, x, w, "native")
    outputs = functional.recurrence(mode, xw, w, b_hn, h0, c0, None, "native")
    pairs = [(out, grad) for out, grad in zip(outputs, grads) if grad is not None]
    if not pairs:
        return [None] * len(needs)
    wanted = [t for t, needed in zip(inputs, needs) if needed]
    found = torch.autograd.grad(
        [out for out, _ in pairs], wanted, [grad for _, grad in pairs], create_graph=True, allow_unused=True
    )
    results = iter(found)
    return [next(results) if needed else None for needed in needs]
