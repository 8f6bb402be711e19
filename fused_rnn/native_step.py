"""One time step of a padded batch on the native CPU backend, called directly: a cell, or a module
called one step at a time (a decoder). Such a step's math is two small GEMMs and a pointwise pass,
which cost less than the general path's Python around them (the op layer's checks and backend
resolutions, and under autograd five to eight graph nodes: the bias fold's split, add and cat, the
projection, the recurrence). Here each direction of the step is one C++ op
(fused_rnn::native_{rnn,lstm,gru}_step_{forward,backward}, csrc/cpu/single_step.cpp), which
composes the kernels the general path calls as the op layer composes them (the bias fold, the
projection and the forward op; the ops' autograd formulas), so the results and the gradients are
the general path's, bit for bit:

- nothing records (no_grad, or no argument requires grad): unrecorded_step, no graph at all;
- autograd records: recorded_step, one graph node (RecordedNativeStep) whose backward is the
  backward step op, and under create_graph recomputes the step through the general path for the
  gradients' own graph (double backward).

The modules have checked the arguments as torch.nn does, and the C++ ops check them again.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import functional
from .backends import resolve_backend
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


def _step_forward(
    mode: str, x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], w_hh: Tensor, b_hh: Optional[Tensor],
    h0: Tensor, c0: Optional[Tensor], save: bool,
) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """The forward step op of `mode` -> its outputs (hs [1, B, H], h_n [B, H], and c_n [B, H] for
    LSTM) and, with `save`, what its backward reads (LSTM cs and gates, GRU gates)."""
    step_ops = torch.ops.fused_rnn
    if mode == "LSTM":
        hs, h_n, c_n, cs, gates = step_ops.native_lstm_step_forward.default(x, w_ih, b_ih, w_hh, b_hh, h0, c0, save)
        return (hs, h_n, c_n), (cs, gates)
    if mode == "GRU":
        hs, h_n, gates = step_ops.native_gru_step_forward.default(x, w_ih, b_ih, w_hh, b_hh, h0, save)
        return (hs, h_n), (gates,)
    hs, h_n = step_ops.native_rnn_step_forward.default(x, w_ih, b_ih, w_hh, b_hh, h0, mode == "RNN_RELU")
    return (hs, h_n), ()


def unrecorded_step(
    mode: str, x: Tensor, w: "functional.LayerWeights", h0: Tensor, c0: Optional[Tensor]
) -> StepResult:
    """run's step where nothing records: the inference ops (an LSTM projects inside its step, as
    the general path's lstm_input_inference does)."""
    outputs, _ = _step_forward(mode, x, w.w_ih, w.b_ih, w.w_hh, w.b_hh, h0, c0, save=False)
    return outputs[0], outputs[1], outputs[2] if mode == "LSTM" else None


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
        outputs, recurrence_saved = _step_forward(mode, x, w_ih, b_ih, w_hh, b_hh, h0, c0, save=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w_ih, b_ih, w_hh, b_hh, h0, c0, outputs[0], *recurrence_saved)
        ctx.mode = mode
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():
            return (None, *_gradients_through_the_general_path(ctx, grads))
        return (None, *_gradients_by_the_formulas(ctx, grads))


def _gradients_by_the_formulas(ctx, grads: Sequence[Optional[Tensor]]) -> tuple:
    """First-order gradients of (x, w_ih, b_ih, w_hh, b_hh, h0, c0): the backward step op, which
    applies the forward op's formula (ops.*_grads), the projection's (ops.linear_grads, the bias's
    sum) and the bias fold's to the tensors saved."""
    mode = ctx.mode
    mask = list(ctx.needs_input_grad[1:6])
    x, w_ih, b_ih, w_hh, b_hh, h0, c0, hs, *recurrence_saved = ctx.saved_tensors
    bias = b_ih is not None and b_hh is not None
    step_ops = torch.ops.fused_rnn
    if mode == "LSTM":
        cs, gates = recurrence_saved
        return step_ops.native_lstm_step_backward.default(
            *grads, x, w_ih, w_hh, bias, h0, c0, hs, cs, gates, mask
        )
    if mode == "GRU":
        (gates,) = recurrence_saved
        b_hh_if_bias = b_hh if bias else None
        gradients = step_ops.native_gru_step_backward.default(*grads, x, w_ih, w_hh, b_hh_if_bias, h0, hs, gates, mask)
    else:
        gradients = step_ops.native_rnn_step_backward.default(
            *grads, x, w_ih, w_hh, bias, h0, hs, mode == "RNN_RELU", mask
        )
    return (*gradients, None)


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
