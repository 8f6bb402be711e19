"""The native CPU kernels on packed input (a PackedSequence's rows: every per-step tensor [N, .],
step t's batch_sizes[t] live rows only):

- every output and gradient is bitwise the padded kernels' on the same rows (the padded call's
  per-step inputs poisoned with NaN past each row's length, fresh allocations poisoned too), forward,
  inference and backward, for every cell and dtype, at odd sizes, T = 1, rows all of one length and
  B = 1, however the team splits the work;
- bad batch_sizes raise an error naming the argument.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn import native
from fused_rnn.packing import flat_index
from fused_rnn.parity import backward_arguments, op_arguments, relative_error
from test_native_recurrence import poisoned
from test_native_sequence import (  # noqa: F401  (two_threads: a fixture)
    SPLITS,
    family,
    forward_and_backward,
    inputs_with_lengths,
    per_step,
    poison_padding,
    two_threads,
)

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]
LENGTHS = {
    "spread": [23, 23, 17, 16, 16, 9, 4, 2, 2],
    "one-step": [1, 1, 1],
    "equal": [6, 6, 6, 6],
    "one-row": [7],
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
# Per family: the per-step outputs of the backward function (dxw, and GRU's d_hn).
PER_STEP_GRADS = {"rnn": [0], "lstm": [0], "gru": [0, 1]}


def batch_sizes_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([sum(length > t for length in lengths) for t in range(max(lengths))])


def packed_inputs(x: dict, batch_sizes: torch.Tensor, flat: torch.Tensor) -> dict:
    """make_inputs' dict for the packed functions: xw packed, batch_sizes in place of lengths."""
    packed = dict(x)
    packed["xw"] = pack(x["xw"], flat)
    packed["lengths"] = batch_sizes
    return packed


def pack(tensor: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """[T, B, ...] -> the packed rows [N, ...]."""
    return tensor.reshape(-1, *tensor.shape[2:])[flat]


def check_packed_equals_padded(cell: str, lengths: list[int], hidden: int, dtype: torch.dtype) -> None:
    x = inputs_with_lengths(cell, lengths, hidden, dtype, seed=5)
    x["xw"] = poison_padding(x["xw"], x["lengths"])
    name = family(cell)
    outputs, grad_inputs, grads = forward_and_backward(cell, x, grad_seed=6)
    batch_sizes = batch_sizes_of(lengths)
    flat = flat_index(batch_sizes, len(lengths), sum(lengths))
    packed_x = packed_inputs(x, batch_sizes, flat)
    _, args = op_arguments(cell, packed_x)
    with poisoned():
        packed_outputs = getattr(native, f"{name}_packed_forward")(*args)
    for index, (got, want) in enumerate(zip(packed_outputs, outputs)):
        want = pack(want, flat) if per_step(index, name) else want
        assert torch.equal(got, want), f"forward output {index}"
    if name != "rnn":
        with poisoned():
            inference = getattr(native, f"{name}_packed_inference")(*args)
        for index, got in enumerate(inference):
            assert torch.equal(got, packed_outputs[index]), f"inference output {index}"
    packed_grads = [pack(grads[0], flat), *grads[1:]]
    with poisoned():
        packed_grad_inputs = getattr(native, f"{name}_packed_backward")(
            *backward_arguments(cell, packed_x, packed_outputs, packed_grads)
        )
    for index, (got, want) in enumerate(zip(packed_grad_inputs, grad_inputs)):
        if name == "lstm" and index == 3:
            # dW_hr: one GEMM over the N packed rows against one over T * B rows with zeros past
            # each length: the same terms, summed in another order.
            limit = {torch.float64: 1e-14, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
            assert relative_error(got, want) <= limit, "dw_hr"
            continue
        want = pack(want, flat) if index in PER_STEP_GRADS[name] else want
        assert torch.equal(got, want), f"backward output {index}"


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_packed_kernels_equal_padded_kernels(cell, dtype, lengths, two_threads):
    check_packed_equals_padded(cell, LENGTHS[lengths], 33, DTYPES[dtype])


@pytest.mark.parametrize("split", ["row-split", "unit-split", "unit-split-prefetched"])
@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru"])
def test_packed_kernels_equal_padded_kernels_however_the_team_splits(cell, split, two_threads):
    check_packed_equals_padded(cell, LENGTHS["spread"], SPLITS[split], torch.float32)


def lstm_packed_args(batch_sizes: torch.Tensor, rows: int, batch: int) -> tuple:
    hidden = 3
    return (
        torch.randn(rows, 4 * hidden),
        torch.randn(4 * hidden, hidden),
        None,
        torch.randn(batch, hidden),
        torch.randn(batch, hidden),
        batch_sizes,
    )


# batch_sizes, N, B -> the messages of the Python op and of the C++ op (which takes B from
# batch_sizes[0], so that a wrong one shows as h0's shape).
BAD_BATCH_SIZES = {
    "increasing": ([2, 3, 1], 6, 2, "batch_sizes must be non-increasing", "batch_sizes\\[1\\] = 3 > batch_sizes\\[0\\] = 2"),
    "zero": ([2, 2, 0], 4, 2, "batch_sizes must be >= 1", "batch_sizes\\[2\\] = 0"),
    "sum": ([3, 2, 1], 7, 3, "batch_sizes must sum to N = 7", "xw must have N = sum\\(batch_sizes\\) = 6 rows"),
    "first": ([3, 2, 1], 6, 2, "batch_sizes\\[0\\] must be the batch size B = 2", "h0 must have shape \\[B, P\\] = \\[3, 3\\]"),
}


@pytest.mark.parametrize("case", BAD_BATCH_SIZES)
def test_bad_batch_sizes_are_rejected(case):
    sizes, rows, batch, message, native_message = BAD_BATCH_SIZES[case]
    args = lstm_packed_args(torch.tensor(sizes), rows, batch)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fused_rnn.lstm_packed_forward(*args, "native")
    with pytest.raises(RuntimeError, match="fused_rnn::native_lstm_packed_forward: .*" + native_message):
        native.lstm_packed_forward(*args)


def test_batch_sizes_of_another_dtype_or_device_or_rank_are_rejected():
    good = torch.tensor([2, 1])
    for bad in (good.to(torch.int32), good.reshape(1, 2), torch.tensor([], dtype=torch.int64)):
        args = lstm_packed_args(bad, 3, 2)
        with pytest.raises(RuntimeError, match="batch_sizes must"):
            torch.ops.fused_rnn.lstm_packed_forward(*args, "native")
        with pytest.raises(RuntimeError, match="native_lstm_packed_forward: batch_sizes must"):
            native.lstm_packed_forward(*args)
    args = lstm_packed_args(good, 3, 2)
    with pytest.raises(RuntimeError, match="xw must be 2-D"):
        torch.ops.fused_rnn.lstm_packed_forward(args[0][None], *args[1:], "native")
    with pytest.raises(RuntimeError, match="c0 must have shape \\[2, 3\\], got \\[3, 3\\]"):
        torch.ops.fused_rnn.lstm_packed_forward(*args[:4], torch.randn(3, 3), args[5], "native")


def test_rows_not_matching_batch_sizes_are_rejected_by_the_backward_op():
    args = lstm_packed_args(torch.tensor([2, 1]), 3, 2)
    hs, h_n, c_n, cs, gates = native.lstm_packed_forward(*args)
    with pytest.raises(RuntimeError, match="native_lstm_packed_backward: grad_hs must have shape \\[N, ...\\]"):
        native.lstm_packed_backward(hs[:2], h_n, c_n, args[1], None, args[3], args[4], args[5], hs, cs, gates)
