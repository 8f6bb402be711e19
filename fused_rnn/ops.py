"""The recurrence custom ops: torch.library registration, fake functions and autograd.

One op per cell and direction of differentiation, shared by every backend; the `backend` argument
names the implementation (see `fused_rnn.backends`; "auto" picks one for the device of the inputs
when the op runs), which receives contiguous, validated inputs. The ops are defined with
`fused_rnn.op_library.define_op` (torch.library's define, impl, register_fake and register_autograd:
custom_op's registration without its import of torch._dynamo on the first eager call); each name
below is the op's OpOverload.

    fused_rnn::rnn_forward   (xw, w_hh, h0, lengths, relu, backend)       -> hs, h_n
    fused_rnn::lstm_forward  (xw, w_hh, w_hr, h0, c0, lengths, backend)   -> hs, h_n, c_n, cs, gates
    fused_rnn::gru_forward   (xw, w_hh, b_hn, h0, lengths, backend)       -> hs, h_n, gates
    fused_rnn::*_backward    the gate and initial-state gradients (see `fused_rnn.reference`)
    fused_rnn::lstm_inference, fused_rnn::gru_inference
                             the forward ops without the tensors saved for backward (cs, gates):
                             -> hs, h_n, c_n and hs, h_n; not differentiable
    fused_rnn::lstm_input_inference (x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, backend)
                             lstm_inference of xw = x @ w_ih^T + bias, which a backend may
                             compute inside the steps (the native one on the CPU)

    fused_rnn::linear        (x, w, b, backend)                           -> x @ w^T + b
                             the GEMMs around the recurrence: the input projection of every
                             step and the gradients of the inputs and the weights

Packed input (a PackedSequence's rows, [N, .] per-step tensors) has ops of its own, with the same
arguments and batch_sizes in place of lengths, and the autograd formulas below: fused_rnn.packed_ops.

The inference ops are what a forward pass runs when no gradient is needed (fused_rnn.functional).
A backend may implement them (`lstm_inference`, `gru_inference`) to skip writing the saved tensors;
otherwise they run its forward functions.

Autograd: the forward ops' backward calls the backward op of the same backend for the gate
gradients, then forms the weight gradients as GEMMs over all steps (deterministic, no atomics).
The backward ops are differentiable too (double backward): their own backward is a vector-Jacobian
product through the float64-capable reference, recomputing the forward from the original inputs.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from .backends import constant_when_traced, get_backend
from .op_library import call_eagerly, define_op, register_autograd

# ----------------------------------------------------------------------------------------------
# Validation shared by the real and the fake implementations.
# ----------------------------------------------------------------------------------------------


def expect_shape(name: str, tensor: Tensor, shape: Sequence[int]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise RuntimeError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def _expect_like(name: str, tensor: Tensor, xw: Tensor) -> None:
    if tensor.dtype != xw.dtype:
        raise RuntimeError(f"{name} must have dtype {xw.dtype} (the dtype of xw), got {tensor.dtype}")
    if tensor.device != xw.device:
        raise RuntimeError(f"{name} must be on {xw.device} (the device of xw), got {tensor.device}")


def _check_xw(xw: Tensor, gates: int, hidden: int) -> tuple[int, int]:
    if xw.dim() != 3 or xw.shape[2] != gates * hidden:
        raise RuntimeError(
            f"xw must have shape [T, B, {gates}*H] = [T, B, {gates * hidden}], got {list(xw.shape)}"
        )
    if xw.shape[0] < 1:
        raise RuntimeError(f"xw must have at least one time step, got shape {list(xw.shape)}")
    if not xw.is_floating_point():
        raise RuntimeError(f"xw must be a floating-point tensor, got {xw.dtype}")
    return xw.shape[0], xw.shape[1]


def _check_lengths(lengths: Optional[Tensor], batch: int, xw: Tensor) -> None:
    if lengths is None:
        return
    if lengths.dtype != torch.int64:
        raise RuntimeError(f"lengths must have dtype torch.int64, got {lengths.dtype}")
    if lengths.device != xw.device:
        raise RuntimeError(f"lengths must be on {xw.device} (the device of xw), got {lengths.device}")
    expect_shape("lengths", lengths, [batch])


def check_lengths_range(lengths: Optional[Tensor], steps: int) -> None:
    """Every length in 1..steps (reads the values: real tensors only)."""
    if lengths is None or lengths.numel() == 0:
        return
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > steps:
        raise RuntimeError(
            f"lengths must lie in [1, {steps}] (T = {steps} time steps), got values in [{low}, {high}]"
        )


def _check_tensors(xw: Tensor, named: dict[str, tuple[Optional[Tensor], Sequence[int]]]) -> None:
    for name, (tensor, shape) in named.items():
        if tensor is not None:
            _expect_like(name, tensor, xw)
            expect_shape(name, tensor, shape)


def check_rnn_args(xw: Tensor, w_hh: Tensor, h0: Tensor, lengths: Optional[Tensor]) -> None:
    hidden = w_hh.shape[-1]
    steps, batch = _check_xw(xw, 1, hidden)
    _check_tensors(xw, {"w_hh": (w_hh, [hidden, hidden]), "h0": (h0, [batch, hidden])})
    _check_lengths(lengths, batch, xw)


def check_lstm_args(
    xw: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], h0: Tensor, c0: Tensor, lengths: Optional[Tensor]
) -> None:
    hidden = w_hh.shape[0] // 4
    steps, batch = _check_xw(xw, 4, hidden)
    state = hidden if w_hr is None else w_hr.shape[0]
    _check_tensors(
        xw,
        {
            "w_hh": (w_hh, [4 * hidden, state]),
            "w_hr": (w_hr, [state, hidden]),
            "h0": (h0, [batch, state]),
            "c0": (c0, [batch, hidden]),
        },
    )
    _check_lengths(lengths, batch, xw)


def check_lstm_input_args(x: Tensor, w_ih: Tensor, bias: Optional[Tensor], w_hh: Tensor) -> Tensor:
    """Checks x [T, B, I], w_ih [4H, I] and bias [4H] or None against w_hh [4H, P] -> a tensor of
    the shape, dtype and device of xw = x @ w_ih^T + bias (no storage), for check_lstm_args."""
    if x.dim() != 3:
        raise RuntimeError(f"x must have shape [T, B, I], got {list(x.shape)}")
    if w_hh.dim() != 2:
        raise RuntimeError(f"w_hh must have shape [4H, P], got {list(w_hh.shape)}")
    gates = w_hh.shape[0]
    _check_tensors(x, {"w_ih": (w_ih, [gates, x.shape[2]]), "bias": (bias, [gates])})
    return x.new_empty(()).expand(x.shape[0], x.shape[1], gates)


def check_gru_args(
    xw: Tensor, w_hh: Tensor, b_hn: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor]
) -> None:
    hidden = w_hh.shape[-1]
    steps, batch = _check_xw(xw, 3, hidden)
    _check_tensors(
        xw,
        {"w_hh": (w_hh, [3 * hidden, hidden]), "b_hn": (b_hn, [hidden]), "h0": (h0, [batch, hidden])},
    )
    _check_lengths(lengths, batch, xw)


def contiguous(*tensors: Optional[Tensor]) -> list[Optional[Tensor]]:
    return [None if t is None else t.contiguous() for t in tensors]


# ----------------------------------------------------------------------------------------------
# Forward and backward ops.
# ----------------------------------------------------------------------------------------------


@define_op("fused_rnn::rnn_forward")
def rnn_forward(
    xw: Tensor, w_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], relu: bool, backend: str
) -> tuple[Tensor, Tensor]:
    check_rnn_args(xw, w_hh, h0, lengths)
    check_lengths_range(lengths, xw.shape[0])
    return get_backend(backend, xw.device).rnn_forward(*contiguous(xw, w_hh, h0, lengths), relu)


@torch.library.register_fake(rnn_forward)
def _(xw, w_hh, h0, lengths, relu, backend):
    check_rnn_args(xw, w_hh, h0, lengths)
    return torch.empty_like(xw), torch.empty_like(h0)


@define_op("fused_rnn::rnn_backward")
def rnn_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    xw: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    relu: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """-> dxw [T, B, H], dh0 [B, H]. `xw` is not read by the kernels; it is an input so that the
    backward of this op can recompute the forward."""
    grad_hs, grad_h_n, w_hh, h0, lengths, hs = contiguous(grad_hs, grad_h_n, w_hh, h0, lengths, hs)
    return get_backend(backend, xw.device).rnn_backward(grad_hs, grad_h_n, w_hh, h0, lengths, hs, relu)


@torch.library.register_fake(rnn_backward)
def _(grad_hs, grad_h_n, xw, w_hh, h0, lengths, hs, relu, backend):
    return torch.empty_like(xw), torch.empty_like(h0)


@define_op("fused_rnn::lstm_forward")
def lstm_forward(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    check_lstm_args(xw, w_hh, w_hr, h0, c0, lengths)
    check_lengths_range(lengths, xw.shape[0])
    return get_backend(backend, xw.device).lstm_forward(*contiguous(xw, w_hh, w_hr, h0, c0, lengths))


@torch.library.register_fake(lstm_forward)
def _(xw, w_hh, w_hr, h0, c0, lengths, backend):
    check_lstm_args(xw, w_hh, w_hr, h0, c0, lengths)
    steps, batch = xw.shape[:2]
    acc = reference.accumulation_dtype(xw.dtype)
    return (
        xw.new_empty(steps, batch, h0.shape[1]),
        torch.empty_like(h0),
        torch.empty_like(c0),
        xw.new_empty(steps, batch, c0.shape[1], dtype=acc),
        torch.empty_like(xw),
    )


@define_op("fused_rnn::lstm_backward")
def lstm_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> dxw [T, B, 4H], dh0 [B, P], dc0 [B, H], dw_hr [P, H] (shape [0] without projection)."""
    args = contiguous(grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, lengths, hs, cs, gates)
    return get_backend(backend, xw.device).lstm_backward(*args)


@torch.library.register_fake(lstm_backward)
def _(grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0, lengths, hs, cs, gates, backend):
    dw_hr = xw.new_empty(0) if w_hr is None else torch.empty_like(w_hr)
    return torch.empty_like(xw), torch.empty_like(h0), torch.empty_like(c0), dw_hr


@define_op("fused_rnn::gru_forward")
def gru_forward(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    check_gru_args(xw, w_hh, b_hn, h0, lengths)
    check_lengths_range(lengths, xw.shape[0])
    return get_backend(backend, xw.device).gru_forward(*contiguous(xw, w_hh, b_hn, h0, lengths))


@torch.library.register_fake(gru_forward)
def _(xw, w_hh, b_hn, h0, lengths, backend):
    check_gru_args(xw, w_hh, b_hn, h0, lengths)
    steps, batch, hidden = xw.shape[0], xw.shape[1], h0.shape[1]
    return (
        xw.new_empty(steps, batch, hidden),
        torch.empty_like(h0),
        xw.new_empty(steps, batch, 4 * hidden),
    )


@define_op("fused_rnn::gru_backward")
def gru_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    gates: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> dxw [T, B, 3H], d_hn [T, B, H], dh0 [B, H]."""
    args = contiguous(grad_hs, grad_h_n, w_hh, b_hn, h0, lengths, hs, gates)
    return get_backend(backend, xw.device).gru_backward(*args)


@torch.library.register_fake(gru_backward)
def _(grad_hs, grad_h_n, xw, w_hh, b_hn, h0, lengths, hs, gates, backend):
    return torch.empty_like(xw), torch.empty_like(hs), torch.empty_like(h0)


def run_inference(backend: str, family: str, args: list, outputs: int) -> tuple[Tensor, ...]:
    """The backend's `<family>_inference` on args, or, for a backend without one, the first
    `outputs` outputs of its `<family>_forward`."""
    implementation = get_backend(backend, args[0].device)
    inference = getattr(implementation, f"{family}_inference", None)
    if inference is not None:
        return inference(*args)
    return getattr(implementation, f"{family}_forward")(*args)[:outputs]


@define_op("fused_rnn::lstm_inference")
def lstm_inference(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_forward without cs and gates: -> hs [T, B, P], h_n [B, P], c_n [B, H]."""
    check_lstm_args(xw, w_hh, w_hr, h0, c0, lengths)
    check_lengths_range(lengths, xw.shape[0])
    return run_inference(backend, "lstm", contiguous(xw, w_hh, w_hr, h0, c0, lengths), outputs=3)


@torch.library.register_fake(lstm_inference)
def _(xw, w_hh, w_hr, h0, c0, lengths, backend):
    check_lstm_args(xw, w_hh, w_hr, h0, c0, lengths)
    return xw.new_empty(*xw.shape[:2], h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0)


@define_op("fused_rnn::lstm_input_inference")
def lstm_input_inference(
    x: Tensor,
    w_ih: Tensor,
    bias: Optional[Tensor],
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_inference of xw = x @ w_ih^T + bias, for x [T, B, I], w_ih [4H, I], bias [4H] or None:
    -> hs [T, B, P], h_n [B, P], c_n [B, H]. A backend with `lstm_input_inference` may run the
    projection inside the steps on the CPU; the others, and every backend elsewhere, run
    `project`, then their lstm_inference."""
    xw_like = check_lstm_input_args(x, w_ih, bias, w_hh)
    check_lstm_args(xw_like, w_hh, w_hr, h0, c0, lengths)
    implementation = get_backend(backend, x.device)
    if x.device.type != "cpu" or not hasattr(implementation, "lstm_input_inference"):
        return lstm_inference(project(x, w_ih, bias, backend), w_hh, w_hr, h0, c0, lengths, backend)
    check_lengths_range(lengths, x.shape[0])
    return implementation.lstm_input_inference(*contiguous(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths))


@torch.library.register_fake(lstm_input_inference)
def _(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, backend):
    xw_like = check_lstm_input_args(x, w_ih, bias, w_hh)
    check_lstm_args(xw_like, w_hh, w_hr, h0, c0, lengths)
    return x.new_empty(*x.shape[:2], h0.shape[1]), torch.empty_like(h0), torch.empty_like(c0)


@define_op("fused_rnn::gru_inference")
def gru_inference(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    backend: str,
) -> tuple[Tensor, Tensor]:
    """gru_forward without gates: -> hs [T, B, H], h_n [B, H]."""
    check_gru_args(xw, w_hh, b_hn, h0, lengths)
    check_lengths_range(lengths, xw.shape[0])
    return run_inference(backend, "gru", contiguous(xw, w_hh, b_hn, h0, lengths), outputs=2)


@torch.library.register_fake(gru_inference)
def _(xw, w_hh, b_hn, h0, lengths, backend):
    check_gru_args(xw, w_hh, b_hn, h0, lengths)
    return xw.new_empty(*xw.shape[:2], h0.shape[1]), torch.empty_like(h0)


# ----------------------------------------------------------------------------------------------
# The GEMMs around the recurrence.
# ----------------------------------------------------------------------------------------------


@define_op("fused_rnn::linear")
def linear(x: Tensor, w: Tensor, b: Optional[Tensor], backend: str) -> Tensor:
    """x [M, K] @ w [N, K]^T + b ([N], [M, N] or None) -> [M, N], operands of any strides, through
    the backend's `linear` where it has one (the native one runs oneDNN on the CPU), else torch's
    GEMM. Differentiable to every order: its gradients are products of this op."""
    implementation = getattr(get_backend(backend, x.device), "linear", None)
    if implementation is not None:
        return implementation(x, w, b)
    return x @ w.t() if b is None else torch.addmm(b, x, w.t())


@torch.library.register_fake(linear)
def _(x, w, b, backend):
    return x.new_empty(x.shape[0], w.shape[0])


def _linear_setup_context(ctx, inputs, output):
    x, w, b, backend = inputs
    ctx.save_for_backward(x, w)
    ctx.bias_is_vector = b is not None and b.dim() == 1
    ctx.backend = backend


def linear_grads(
    grad: Tensor, x: Tensor, w: Tensor, needs_dx: bool, needs_dw: bool, backend: str
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The gradients of x [M, K] @ w [N, K]^T for grad [M, N] -> dx [M, K], dw [N, K] (None where
    not needed), through the `linear` op."""
    dx = call_eagerly(linear, grad, w.t(), None, backend) if needs_dx else None
    dw = call_eagerly(linear, grad.t(), x.t(), None, backend) if needs_dw else None
    return dx, dw


def _linear_grad(ctx, grad):
    x, w = ctx.saved_tensors
    dx, dw = linear_grads(grad, x, w, ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.backend)
    db = None
    if ctx.needs_input_grad[2]:
        db = grad.sum(0) if ctx.bias_is_vector else grad
    return dx, dw, db, None


register_autograd(linear, _linear_grad, setup_context=_linear_setup_context)


@constant_when_traced
def has_own_cpu_gemm(backend: str) -> bool:
    """Whether `backend` ("auto" or a name) implements `linear`, the GEMMs around its recurrence, on
    the CPU."""
    return hasattr(get_backend(backend, "cpu"), "linear")


def project(x: Tensor, w: Tensor, b: Optional[Tensor], backend: str) -> Tensor:
    """F.linear(x, w, b) for x [..., K], w [N, K], b [N] or None -> [..., N]: on the CPU the `linear`
    op for a backend with its own GEMM; elsewhere, for other backends and under autocast (which
    casts F.linear) F.linear."""
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or not has_own_cpu_gemm(backend):
        return F.linear(x, w, b)
    return call_eagerly(linear, x.reshape(-1, x.shape[-1]), w, b, backend).view(*x.shape[:-1], w.shape[0])


# Up to this size of hs, recurrent_weight_grad copies the previous states into one operand: one
# GEMM call instead of two costs less than the copy (T = 64, B = 1, H = 128, LSTM: 39 us against
# 61 us on the CPU).
_ONE_GEMM_HIDDEN_BYTES = 256 * 1024


def recurrent_weight_grad(blocks: list[Tensor], h0: Tensor, hs: Tensor, backend: str = "reference") -> Tensor:
    """sum_t d_gates[t]^T h[t-1] for each block d_gates [T, B, G_i] of the gate gradients (GRU's
    come from two tensors), h0 [B, P], hs [T, B, P] -> [sum G_i, P], the blocks' in their order.

    A small hs (up to _ONE_GEMM_HIDDEN_BYTES, more than one step) is copied once into the previous
    states [h0, hs[:-1]], one GEMM per block; otherwise each block runs two GEMMs over views
    (step 0 against h0, steps 1.. added to it against hs[:-1]), with no copy of hs nor of the
    blocks (a slice of the last dimension of a contiguous tensor is a view), and a single step (a
    decoder called once per step) runs the first only. Blocks are first joined where that is
    cheaper than joining their results (joined_when_cheaper).
    """
    blocks = joined_when_cheaper(blocks, hs.shape[2])
    if hs.shape[0] > 1 and hs.numel() * hs.element_size() <= _ONE_GEMM_HIDDEN_BYTES:  # symbolic sizes have no nbytes
        previous = torch.cat([h0.unsqueeze(0), hs[:-1]]).reshape(-1, hs.shape[2]).t()
        grads = [
            call_eagerly(linear, d_gates.reshape(-1, d_gates.shape[2]).t(), previous, None, backend)
            for d_gates in blocks
        ]
    else:
        grads = [_weight_grad_over_views(d_gates, h0, hs, backend) for d_gates in blocks]
    return grads[0] if len(grads) == 1 else torch.cat(grads)


def joined_when_cheaper(blocks: list[Tensor], width: int) -> list[Tensor]:
    """Gate-gradient blocks [..., G_i] over R rows, of a weight gradient [sum G_i, width] that is
    their results concatenated: [the blocks joined, [..., sum G_i]] when that copy (R x sum G_i) is
    smaller than the copy of the results (sum G_i x width), for one GEMM per product instead; else
    the blocks. A GRU decoder's single step copies [B, 3H] instead of [3H, H] (B = 64, H = 500,
    float64: 0.77 MB instead of 6 MB, whose copy took 0.7 ms per step)."""
    rows = blocks[0].shape[:-1].numel()  # the blocks are empty at hidden size 0
    if len(blocks) > 1 and rows < width:
        return [torch.cat(blocks, dim=-1)]
    return blocks


def _weight_grad_over_views(d_gates: Tensor, h0: Tensor, hs: Tensor, backend: str) -> Tensor:
    first = call_eagerly(linear, d_gates[0].t(), h0.t(), None, backend)
    if d_gates.shape[0] == 1:
        return first
    rest_gates = d_gates[1:].reshape(-1, d_gates.shape[2])
    rest_hidden = hs[:-1].reshape(-1, hs.shape[2])
    return call_eagerly(linear, rest_gates.t(), rest_hidden.t(), first, backend)


# ----------------------------------------------------------------------------------------------
# Autograd of the forward ops.
# ----------------------------------------------------------------------------------------------


def _or_zeros(grad: Optional[Tensor], like: Tensor) -> Tensor:
    """The gradient of an output, zeros when autograd passed none: the forward ops' contexts do
    not materialize gradients, so that the saved cs and gates ([T, B, 4H]) get no zero tensor."""
    return torch.zeros_like(like) if grad is None else grad


# The forward ops' backward formulas are written once for padded input and for packed input (the
# ops of fused_rnn.packed_ops, whose arguments sit where the padded ops' do, batch_sizes in place of
# lengths): `backward_op` is the matching backward op, `weight_grad(blocks, h0, hs, lengths,
# backend)` the recurrent weight's gradient in that layout, for gate gradients given as column
# blocks (GRU's come from two tensors) and concatenated in their order.


def padded_weight_grad(
    blocks: list[Tensor], h0: Tensor, hs: Tensor, lengths: Optional[Tensor], backend: str
) -> Tensor:
    """recurrent_weight_grad for padded tensors (rows past their length have zero gate
    gradients)."""
    return recurrent_weight_grad(blocks, h0, hs, backend)


def rnn_setup_context(ctx, inputs, output):
    xw, w_hh, h0, lengths, relu, backend = inputs
    hs, _ = output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(xw, w_hh, h0, lengths, hs)
    ctx.relu, ctx.backend = relu, backend


def rnn_grads(
    backward_op, weight_grad: Callable, saved: Sequence, grads: Sequence, needs_dw_hh: bool, relu: bool, backend: str
) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """The RNN forward op's formula: its saved (xw, w_hh, h0, lengths, hs) and the gradients of
    (hs, h_n), each None for zeros -> dxw, dw_hh (None where not needed), dh0."""
    xw, w_hh, h0, lengths, hs = saved
    grad_hs, grad_h_n = _or_zeros(grads[0], hs), _or_zeros(grads[1], h0)
    dxw, dh0 = call_eagerly(backward_op, grad_hs, grad_h_n, xw, w_hh, h0, lengths, hs, relu, backend)
    dw_hh = weight_grad([dxw], h0, hs, lengths, backend) if needs_dw_hh else None
    return dxw, dw_hh, dh0


def rnn_grad_through(backward_op, weight_grad: Callable) -> Callable:
    def grad(ctx, grad_hs, grad_h_n):
        grads = (grad_hs, grad_h_n)
        dxw, dw_hh, dh0 = rnn_grads(
            backward_op, weight_grad, ctx.saved_tensors, grads, ctx.needs_input_grad[1], ctx.relu, ctx.backend
        )
        return dxw, dw_hh, dh0, None, None, None

    return grad


register_autograd(
    rnn_forward, rnn_grad_through(rnn_backward, padded_weight_grad), setup_context=rnn_setup_context
)


def lstm_setup_context(ctx, inputs, output):
    xw, w_hh, w_hr, h0, c0, lengths, backend = inputs
    hs, _, _, cs, gates = output
    ctx.mark_non_differentiable(cs, gates)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(xw, w_hh, w_hr, h0, c0, lengths, hs, cs, gates)
    ctx.backend = backend


def lstm_grads(
    backward_op, weight_grad: Callable, saved: Sequence, grads: Sequence, needs_dw_hh: bool, backend: str
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Tensor, Tensor]:
    """The LSTM forward op's formula: its saved (xw, w_hh, w_hr, h0, c0, lengths, hs, cs, gates)
    and the gradients of (hs, h_n, c_n), each None for zeros -> dxw, dw_hh (None where not
    needed), dw_hr (None without projection), dh0, dc0."""
    xw, w_hh, w_hr, h0, c0, lengths, hs, cs, gates = saved
    grad_hs, grad_h_n, grad_c_n = _or_zeros(grads[0], hs), _or_zeros(grads[1], h0), _or_zeros(grads[2], c0)
    dxw, dh0, dc0, dw_hr = call_eagerly(
        backward_op, grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0, lengths, hs, cs, gates, backend
    )
    dw_hh = weight_grad([dxw], h0, hs, lengths, backend) if needs_dw_hh else None
    return dxw, dw_hh, None if w_hr is None else dw_hr, dh0, dc0


def lstm_grad_through(backward_op, weight_grad: Callable) -> Callable:
    def grad(ctx, grad_hs, grad_h_n, grad_c_n, _grad_cs, _grad_gates):
        grads = (grad_hs, grad_h_n, grad_c_n)
        dxw, dw_hh, dw_hr, dh0, dc0 = lstm_grads(
            backward_op, weight_grad, ctx.saved_tensors, grads, ctx.needs_input_grad[1], ctx.backend
        )
        return dxw, dw_hh, dw_hr, dh0, dc0, None, None

    return grad


register_autograd(
    lstm_forward, lstm_grad_through(lstm_backward, padded_weight_grad), setup_context=lstm_setup_context
)


def gru_setup_context(ctx, inputs, output):
    xw, w_hh, b_hn, h0, lengths, backend = inputs
    hs, _, gates = output
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(xw, w_hh, b_hn, h0, lengths, hs, gates)
    ctx.backend = backend


def gru_grads(
    backward_op,
    weight_grad: Callable,
    saved: Sequence,
    grads: Sequence,
    needs_dw_hh: bool,
    needs_db_hn: bool,
    backend: str,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Tensor]:
    """The GRU forward op's formula: its saved (xw, w_hh, b_hn, h0, lengths, hs, gates) and the
    gradients of (hs, h_n), each None for zeros -> dxw, dw_hh, db_hn (each None where not
    needed), dh0."""
    xw, w_hh, b_hn, h0, lengths, hs, gates = saved
    grad_hs, grad_h_n = _or_zeros(grads[0], hs), _or_zeros(grads[1], h0)
    dxw, d_hn, dh0 = call_eagerly(backward_op, grad_hs, grad_h_n, xw, w_hh, b_hn, h0, lengths, hs, gates, backend)
    hidden = h0.shape[1]
    dw_hh = None
    if needs_dw_hh:
        # The gradients of W_hr, W_hz (rows of dxw) and W_hn (rows of d_hn), without a copy of dxw.
        dw_hh = weight_grad([dxw[..., : 2 * hidden], d_hn], h0, hs, lengths, backend)
    db_hn = d_hn.flatten(0, -2).sum(0) if needs_db_hn else None
    return dxw, dw_hh, db_hn, dh0


def gru_grad_through(backward_op, weight_grad: Callable) -> Callable:
    def grad(ctx, grad_hs, grad_h_n, _grad_gates):
        needs = ctx.needs_input_grad
        dxw, dw_hh, db_hn, dh0 = gru_grads(
            backward_op, weight_grad, ctx.saved_tensors, (grad_hs, grad_h_n), needs[1], needs[2], ctx.backend
        )
        return dxw, dw_hh, db_hn, dh0, None, None

    return grad


register_autograd(
    gru_forward, gru_grad_through(gru_backward, padded_weight_grad), setup_context=gru_setup_context
)


# ----------------------------------------------------------------------------------------------
# Autograd of the backward ops (double backward), through the reference.
# ----------------------------------------------------------------------------------------------


def reference_vjp(
    function: Callable[..., Sequence[Tensor]],
    inputs: Sequence[Optional[Tensor]],
    grad_outputs: Sequence[Optional[Tensor]],
) -> list[Optional[Tensor]]:
    """Vector-Jacobian product of `function` at `inputs` (None inputs pass through as None).

    torch.func.vjp differentiates with respect to each input as an independent variable even where
    the inputs depend on one another outside (grad_hs is usually a function of hs, hence of xw), and
    its result stays differentiable by autograd, so derivatives of every order are right.
    """
    present = [i for i, x in enumerate(inputs) if x is not None]

    def of_present(*values: Tensor) -> tuple[Tensor, ...]:
        full = list(inputs)
        for i, value in zip(present, values):
            full[i] = value
        return tuple(function(*full))

    outputs, vjp = torch.func.vjp(of_present, *[inputs[i] for i in present])
    cotangents = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grad_outputs))
    grads = iter(vjp(cotangents))
    return [None if x is None else next(grads) for x in inputs]


# Written once for both layouts like the forward ops' formulas: `call(function, name, args)` runs
# the reference function `name` of fused_rnn.reference on args in the op's layout (directly for
# padded input; fused_rnn.packed_ops.padded_call for packed input).


def call_padded(function: Callable, name: str, args: list) -> Sequence[Tensor]:
    """function(*args): the `call` of the padded ops (their arguments are the reference's)."""
    return function(*args)


def rnn_backward_setup_context(ctx, inputs, output):
    grad_hs, grad_h_n, xw, w_hh, h0, lengths, hs, relu, backend = inputs
    ctx.save_for_backward(grad_hs, grad_h_n, xw, w_hh, h0, lengths)
    ctx.relu = relu


def rnn_backward_grad_in(call: Callable) -> Callable:
    def grad(ctx, grad_dxw, grad_dh0):
        grad_hs, grad_h_n, xw, w_hh, h0, lengths = ctx.saved_tensors
        relu = ctx.relu

        def backward_from_inputs(grad_hs, grad_h_n, xw, w_hh, h0):
            hs, _ = call(reference.rnn_forward, "rnn_forward", [xw, w_hh, h0, lengths, relu])
            return call(reference.rnn_backward, "rnn_backward", [grad_hs, grad_h_n, w_hh, h0, lengths, hs, relu])

        grads = reference_vjp(backward_from_inputs, [grad_hs, grad_h_n, xw, w_hh, h0], [grad_dxw, grad_dh0])
        return (*grads, None, None, None, None)

    return grad


register_autograd(
    rnn_backward, rnn_backward_grad_in(call_padded), setup_context=rnn_backward_setup_context
)


def lstm_backward_setup_context(ctx, inputs, output):
    grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0, lengths, *_ = inputs
    ctx.save_for_backward(grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0, lengths)


def lstm_backward_grad_in(call: Callable) -> Callable:
    def grad(ctx, grad_dxw, grad_dh0, grad_dc0, grad_dw_hr):
        grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0, lengths = ctx.saved_tensors

        def backward_from_inputs(grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0):
            hs, _, _, cs, gates = call(reference.lstm_forward, "lstm_forward", [xw, w_hh, w_hr, h0, c0, lengths])
            return call(
                reference.lstm_backward,
                "lstm_backward",
                [grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, lengths, hs, cs, gates],
            )

        grads = reference_vjp(
            backward_from_inputs,
            [grad_hs, grad_h_n, grad_c_n, xw, w_hh, w_hr, h0, c0],
            [grad_dxw, grad_dh0, grad_dc0, None if w_hr is None else grad_dw_hr],
        )
        return (*grads, None, None, None, None, None)

    return grad


register_autograd(
    lstm_backward, lstm_backward_grad_in(call_padded), setup_context=lstm_backward_setup_context
)


def gru_backward_setup_context(ctx, inputs, output):
    grad_hs, grad_h_n, xw, w_hh, b_hn, h0, lengths, *_ = inputs
    ctx.save_for_backward(grad_hs, grad_h_n, xw, w_hh, b_hn, h0, lengths)


def gru_backward_grad_in(call: Callable) -> Callable:
    def grad(ctx, grad_dxw, grad_d_hn, grad_dh0):
        grad_hs, grad_h_n, xw, w_hh, b_hn, h0, lengths = ctx.saved_tensors

        def backward_from_inputs(grad_hs, grad_h_n, xw, w_hh, b_hn, h0):
            hs, _, gates = call(reference.gru_forward, "gru_forward", [xw, w_hh, b_hn, h0, lengths])
            return call(
                reference.gru_backward, "gru_backward", [grad_hs, grad_h_n, w_hh, b_hn, h0, lengths, hs, gates]
            )

        grads = reference_vjp(
            backward_from_inputs,
            [grad_hs, grad_h_n, xw, w_hh, b_hn, h0],
            [grad_dxw, grad_d_hn, grad_dh0],
        )
        return (*grads, None, None, None, None)

    return grad


register_autograd(
    gru_backward, gru_backward_grad_in(call_padded), setup_context=gru_backward_setup_context
)
