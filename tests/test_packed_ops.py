"""The packed-input custom ops (fused_rnn.packed_ops): opcheck (schema, fake functions, autograd
registration) of every op on the native backend and on the reference backend (which runs its
padded functions between a pad and a pack), the two backends' agreement, double backward by
gradgradcheck, and the modules' packed input on the CPU running on the packed rows."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import native, packed_ops  # noqa: F401  (registers the ops)
from fused_rnn.packing import flat_index
from fused_rnn.parity import Case, make_inputs, op_arguments, relative_error

REASON = native.unavailable_reason(torch.device("cpu"))
BACKENDS = ["reference"] + ([] if REASON is not None else ["native"])
CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
LENGTHS = [5, 5, 3, 2, 1]


def packed_case(cell: str, dtype: torch.dtype = torch.float64, requires_grad: bool = False) -> tuple[str, list]:
    """The family and the arguments (without backend) of `cell`'s packed forward op, rows of
    LENGTHS, odd sizes."""
    x = make_inputs(Case(cell, max(LENGTHS), len(LENGTHS), 3, proj=2, seed=11), torch.Generator().manual_seed(11))
    batch_sizes = torch.tensor([sum(length > t for length in LENGTHS) for t in range(max(LENGTHS))])
    flat = flat_index(batch_sizes, len(LENGTHS), sum(LENGTHS))
    x = {n: None if t is None else t.to(dtype) for n, t in x.items()}
    x["xw"] = x["xw"].reshape(-1, x["xw"].shape[2])[flat]
    x["lengths"] = batch_sizes
    for name, tensor in x.items():
        if tensor is not None and tensor.is_floating_point():
            tensor.requires_grad_(requires_grad)
    name, args = op_arguments(cell, x)
    return name, list(args)


def forward_op(name: str, inference: bool = False):
    return getattr(torch.ops.fused_rnn, f"{name}_packed_{'inference' if inference else 'forward'}")


def backward_args(name: str, args: list, outputs: tuple) -> list:
    """The packed backward op's arguments (without backend) at args' forward outputs."""
    generator = torch.Generator().manual_seed(12)
    grads = [torch.randn(o.shape, generator=generator, dtype=o.dtype) for o in outputs[: 3 if name == "lstm" else 2]]
    xw, *rest = args
    if name == "rnn":
        w_hh, h0, batch_sizes, relu = rest
        return [*grads, xw, w_hh, h0, batch_sizes, outputs[0], relu]
    if name == "lstm":
        w_hh, w_hr, h0, c0, batch_sizes = rest
        return [*grads, xw, w_hh, w_hr, h0, c0, batch_sizes, outputs[0], outputs[3], outputs[4]]
    w_hh, b_hn, h0, batch_sizes = rest
    return [*grads, xw, w_hh, b_hn, h0, batch_sizes, outputs[0], outputs[2]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_opcheck(cell, backend):
    name, args = packed_case(cell, torch.float32)
    outputs = forward_op(name)(*args, backend)
    torch.library.opcheck(forward_op(name), (*args, backend))
    if name != "rnn":
        torch.library.opcheck(forward_op(name, inference=True), (*args, backend))
    backward = getattr(torch.ops.fused_rnn, f"{name}_packed_backward")
    torch.library.opcheck(backward, (*backward_args(name, args, outputs), backend))


@pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")
@pytest.mark.parametrize("cell", CELLS)
def test_native_packed_ops_agree_with_the_padded_reference(cell):
    """Outputs and every gradient of the native packed op against the reference backend's, whose
    packed op pads, runs the float64 reference loop, and packs."""
    results = {}
    for backend in ("native", "reference"):
        name, args = packed_case(cell, requires_grad=True)
        outputs = forward_op(name)(*args, backend)
        differentiable = outputs[: 3 if name == "lstm" else 2]
        generator = torch.Generator().manual_seed(13)
        loss = sum((o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in differentiable)
        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        results[backend] = [*differentiable, *torch.autograd.grad(loss, inputs)]
    for index, (got, want) in enumerate(zip(results["native"], results["reference"])):
        assert relative_error(got, want) <= 1e-12, f"output or gradient {index}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm_proj", "gru"])
def test_double_backward(cell, backend):
    name, args = packed_case(cell, requires_grad=True)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def function(*values):
        full = list(args)
        for i, value in zip(tensors, values):
            full[i] = value
        outputs = forward_op(name)(*full, backend)
        return outputs[: 3 if name == "lstm" else 2]

    assert torch.autograd.gradgradcheck(function, [args[i] for i in tensors])


@pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")
@pytest.mark.parametrize("bidirectional", [False, True])
def test_module_runs_packed_input_on_its_rows(bidirectional):
    """A PackedSequence into a native module on the CPU runs the packed kernels, without the
    padded kernels and without the accumulating index_put of a pad/pack round trip."""
    model = fused_rnn.LSTM(4, 6, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(5, 3, 4, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([5, 3, 2]))
    with torch.profiler.profile() as profile:
        output, _ = model(packed)
        output.data.sum().backward()
    names = {event.name for event in profile.events()}
    assert "fused_rnn::native_lstm_packed_forward" in names and "fused_rnn::native_lstm_packed_backward" in names
    assert not names & {"fused_rnn::native_lstm_forward", "fused_rnn::native_lstm_backward", "aten::index_put_"}
