"""The Triton backend behind the custom ops: opcheck of every forward and backward op,
torch.compile(fullgraph=True) of a module, double backward, and availability."""

from __future__ import annotations

import pytest
import torch

import fused_rnn
from fused_rnn import ops
from fused_rnn.backends import unavailable_reason

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REASON = unavailable_reason("triton", DEVICE)
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton backend unavailable: {REASON}")

T, B, H, P = 3, 2, 5, 3


def _randn(*shape, requires_grad=False):
    return torch.randn(*shape, device=DEVICE, requires_grad=requires_grad)


def _lengths():
    return torch.tensor([3, 1], device=DEVICE)


def _forward_and_backward_args(cell: str):
    """(forward op, its args, backward op, its args) at a tiny size, with lengths."""
    lengths = _lengths()
    if cell in ("rnn_tanh", "rnn_relu"):
        relu = cell == "rnn_relu"
        xw, w_hh, h0 = _randn(T, B, H, requires_grad=True), _randn(H, H, requires_grad=True), _randn(B, H)
        forward_args = (xw, w_hh, h0, lengths, relu, "triton")
        hs, _ = ops.rnn_forward(*forward_args)
        backward_args = (_randn(T, B, H), _randn(B, H), xw, w_hh, h0, lengths, hs.detach(), relu, "triton")
        return ops.rnn_forward, forward_args, ops.rnn_backward, backward_args
    if cell in ("lstm", "lstm_proj"):
        state = P if cell == "lstm_proj" else H
        w_hr = _randn(P, H, requires_grad=True) if cell == "lstm_proj" else None
        xw, w_hh = _randn(T, B, 4 * H, requires_grad=True), _randn(4 * H, state, requires_grad=True)
        h0, c0 = _randn(B, state, requires_grad=True), _randn(B, H, requires_grad=True)
        forward_args = (xw, w_hh, w_hr, h0, c0, lengths, "triton")
        hs, _, _, cs, gates = ops.lstm_forward(*forward_args)
        backward_args = (
            _randn(T, B, state), _randn(B, state), _randn(B, H), xw, w_hh, w_hr, h0, c0, lengths,
            hs.detach(), cs, gates, "triton",
        )
        return ops.lstm_forward, forward_args, ops.lstm_backward, backward_args
    xw, w_hh = _randn(T, B, 3 * H, requires_grad=True), _randn(3 * H, H, requires_grad=True)
    b_hn, h0 = _randn(H, requires_grad=True), _randn(B, H, requires_grad=True)
    forward_args = (xw, w_hh, b_hn, h0, lengths, "triton")
    hs, _, gates = ops.gru_forward(*forward_args)
    backward_args = (_randn(T, B, H), _randn(B, H), xw, w_hh, b_hn, h0, lengths, hs.detach(), gates, "triton")
    return ops.gru_forward, forward_args, ops.gru_backward, backward_args


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "lstm_proj", "gru"])
def test_opcheck_forward_and_backward_ops(cell):
    forward, forward_args, backward, backward_args = _forward_and_backward_args(cell)
    torch.library.opcheck(forward, forward_args)
    torch.library.opcheck(backward, backward_args)


def test_lstm_module_compiles_with_fullgraph():
    torch.manual_seed(0)
    module = fused_rnn.LSTM(4, H, num_layers=2, backend="triton").to(DEVICE)
    x = _randn(T, B, 4, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True)
    out, (h_n, c_n) = compiled(x)
    expected, (h_expected, c_expected) = module(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h_n, h_expected)
    torch.testing.assert_close(c_n, c_expected)
    (grad_compiled,) = torch.autograd.grad(out.sum() + c_n.sum(), x)
    (grad_eager,) = torch.autograd.grad(expected.sum() + c_expected.sum(), x)
    torch.testing.assert_close(grad_compiled, grad_eager)


def test_double_backward_goes_through_the_reference():
    """The gradient of a gradient: the Triton backward, then the reference's backward of it,
    against the same computed entirely by the float64 reference."""
    torch.manual_seed(1)
    xw, w_hh = torch.randn(T, B, 4 * H, dtype=torch.float64), torch.randn(4 * H, H, dtype=torch.float64) / 3
    h0, c0 = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    lengths = _lengths()

    def second_order(backend, dtype):
        leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (xw, w_hh, h0, c0)]
        hs, h_n, c_n, _, _ = ops.lstm_forward(leaves[0], leaves[1], None, leaves[2], leaves[3], lengths.to(DEVICE), backend)
        first = torch.autograd.grad((hs * hs).sum() + h_n.sum() + c_n.sum(), leaves, create_graph=True)
        penalty = sum((g * g).sum() for g in first)
        return torch.autograd.grad(penalty, leaves)

    ours = second_order("triton", torch.float32)
    exact = second_order("reference", torch.float64)
    for value, expected in zip(ours, exact):
        error = ((value.double().cpu() - expected.cpu()).norm() / expected.norm()).item()
        assert error <= 1e-5


def test_unavailable_reason():
    from fused_rnn import kernels

    assert kernels.unavailable_reason(DEVICE) is None
    assert "not on meta" in kernels.unavailable_reason(torch.device("meta"))
    assert unavailable_reason("triton", DEVICE) is None
