"""The attention custom ops: opcheck (schema, fake functions, autograd registration), double
backward, backend choice, and the op-level argument checks."""

import pytest
import torch

from fused_rnn import attention_ops

B, TQ, TK, A, D, DV = 2, 3, 5, 4, 3, 2


def _additive_args(dtype, lengths, need_weights, backend):
    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    return (leaf(B, TQ, A), leaf(B, TK, A), leaf(A), leaf(B, TK, DV), lengths, need_weights, backend)


def _dot_args(dtype, lengths, need_weights, backend):
    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)

    return (leaf(B, TQ, D), leaf(B, TK, D), leaf(B, TK, DV), lengths, 0.5, need_weights, backend)


OPS = {
    "additive": (attention_ops.additive_attention_forward, _additive_args),
    "dot": (attention_ops.dot_attention_forward, _dot_args),
}


def _require(backend):
    if backend not in attention_ops.attention_backends("cpu"):
        pytest.skip(f"attention backend {backend!r} cannot run on the CPU here")


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float64), ("triton", torch.float32)])
@pytest.mark.parametrize("score", list(OPS))
@pytest.mark.parametrize("need_weights", [False, True])
def test_opcheck(backend, dtype, score, need_weights):
    _require(backend)
    op, make_args = OPS[score]
    args = make_args(dtype, torch.tensor([TK, 2]), need_weights, backend)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("score", list(OPS))
@pytest.mark.parametrize("lengths", [None, torch.tensor([2, TK])], ids=["full", "lengths"])
def test_double_backward(score, lengths):
    op, make_args = OPS[score]
    args = make_args(torch.float64, lengths, True, "reference")
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def context_and_weights(*tensors):
        full = list(args)
        positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
        for i, t in zip(positions, tensors):
            full[i] = t
        context, _, weights = op(*full)
        return context, weights

    assert torch.autograd.gradgradcheck(context_and_weights, tensors)


def test_auto_and_named_backends_on_cpu():
    assert attention_ops.resolve_attention_backend("reference", "cpu") == "reference"
    expected_auto = "native" if "native" in attention_ops.attention_backends("cpu") else "reference"
    assert attention_ops.resolve_attention_backend("auto", "cpu") == expected_auto
    with pytest.raises(ValueError, match="backend must be one of"):
        attention_ops.resolve_attention_backend("fast", "cpu")
    if "native" not in attention_ops.attention_backends("cpu"):
        with pytest.raises(RuntimeError, match="backend 'native'"):
            attention_ops.resolve_attention_backend("native", "cpu")


@pytest.mark.parametrize(
    "change,message",
    [
        ({1: torch.randn(B, TK, A + 1)}, r"pk must have shape \[B, Tk, A\] = \[2, Tk, 4\]"),
        ({2: torch.randn(A, 1)}, r"v must have shape \[4\]"),
        ({3: torch.randn(B, TK + 1, DV)}, r"values must have shape \[B, Tk, Dv\] = \[2, 5, Dv\]"),
        ({3: torch.randn(B, TK, DV, dtype=torch.float64)}, r"values must have dtype torch.float32"),
        ({4: torch.tensor([1, 2], dtype=torch.int32)}, r"key_lengths must have dtype torch.int64"),
        ({4: torch.tensor([1, TK + 1])}, r"key_lengths must lie in \[1, 5\]"),
        ({0: torch.ones(B, TQ, A, dtype=torch.int32)}, r"pq must be a floating-point tensor"),
    ],
)
def test_additive_op_argument_errors(change, message):
    args = list(_additive_args(torch.float32, None, False, "reference"))
    for position, value in change.items():
        args[position] = value
    with pytest.raises(RuntimeError, match=message):
        attention_ops.additive_attention_forward(*args)


def test_dot_op_argument_errors():
    args = list(_dot_args(torch.float32, None, False, "reference"))
    args[1] = torch.randn(B, TK, D + 2)
    with pytest.raises(RuntimeError, match=r"keys must have shape \[B, Tk, D\] = \[2, Tk, 3\]"):
        attention_ops.dot_attention_forward(*args)
    args = list(_dot_args(torch.float32, None, False, "reference"))
    args[4] = 0.0
    with pytest.raises(RuntimeError, match="scale must be a finite positive number"):
        attention_ops.dot_attention_forward(*args)
