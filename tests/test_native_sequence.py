"""The native CPU sequence kernels' handling of rows and weights, beyond parity:

- rows of a call with lengths run over their live prefix only, and each row's results are bitwise
  those of the same row run without lengths over its own steps (padding poisoned with NaN, so a
  read of it shows);
- lengths in any order give bitwise the results of the same rows sorted;
- a single-step call (a decoder called once per step) copies no weight.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn import native
from fused_rnn.parity import Case, backward_arguments, make_inputs, op_arguments
from test_native_recurrence import poisoned

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

CELLS = ["rnn_tanh", "lstm", "lstm_proj", "gru"]
NAN = float("nan")


def family(cell: str) -> str:
    return cell.split("_")[0]


def inputs_with_lengths(cell: str, lengths: list[int], hidden: int, dtype: torch.dtype, seed: int) -> dict:
    case = Case(cell, max(lengths), len(lengths), hidden, proj=7, seed=seed)
    x = make_inputs(case, torch.Generator().manual_seed(seed))
    x = {n: None if t is None else t.to(dtype) for n, t in x.items()}
    x["lengths"] = torch.tensor(lengths)
    return x


def padding(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """[T, B] True where step t is past row b's length."""
    return torch.arange(steps)[:, None] >= lengths[None, :]


def poison_padding(tensor: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A copy of tensor [T, B, ...] with NaN at every step past each row's length."""
    return tensor.masked_fill(padding(lengths, tensor.shape[0]).reshape(*tensor.shape[:2], *([1] * (tensor.dim() - 2))), NAN)


def forward_and_backward(cell: str, x: dict, grad_seed: int):
    """The native forward (every output, saved tensors included) and backward outputs; the
    backward reads saved tensors and output gradients poisoned past each row's length."""
    name, args = op_arguments(cell, x)
    with poisoned():
        outputs = getattr(native, f"{name}_forward")(*args)
    generator = torch.Generator().manual_seed(grad_seed)
    grads = [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.dtype) for o in outputs[: 3 if name == "lstm" else 2]]
    saved = list(outputs)
    if x["lengths"] is not None:
        grads[0] = poison_padding(grads[0], x["lengths"])
        saved[0] = poison_padding(saved[0], x["lengths"])  # hs
        for index in range(3 if name == "lstm" else 2, len(saved)):  # cs, gates
            saved[index] = poison_padding(saved[index], x["lengths"])
    with poisoned():
        grad_inputs = getattr(native, f"{name}_backward")(*backward_arguments(cell, x, tuple(saved), grads))
    return outputs, grad_inputs, grads


def rows_of(x: dict, rows: torch.Tensor, steps: int) -> dict:
    """The inputs of `rows` over their first `steps` steps, without lengths."""
    sub = {}
    for name, tensor in x.items():
        if tensor is None or name in ("w_hh", "w_hr", "b_hn"):
            sub[name] = tensor
        elif name == "xw":
            sub[name] = tensor[:steps, rows].contiguous()
        elif name == "lengths":
            sub[name] = None
        else:
            sub[name] = tensor[rows].contiguous()
    return sub


def per_step(index: int, name: str) -> bool:
    """Whether output `index` of `name`'s forward ([hs, h_n, (c_n), saved...]) is [T, B, ...]."""
    return index == 0 or index >= (3 if name == "lstm" else 2)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


# H = 37: one thread; H = 100: the team splits the rows (a small weight); H = 520: it splits the
# units (a weight larger than a core's cache, few rows); H = 250: it splits the units and
# prefetches xw (LSTM's and GRU's float32 weight within two cores' caches; RNN's splits the rows).
SPLITS = {"one-thread": 37, "row-split": 100, "unit-split": 520, "unit-split-prefetched": 250}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_rows_with_lengths_equal_each_row_run_alone(cell, dtype, split, two_threads):
    """Sorted lengths (as packed sequences give them): the products run over the live prefix of
    rows; every output and gradient of a row equals bitwise the same row run without lengths over
    its own steps, and every output past a row's length is zero, however the team splits the work.
    Lengths >= 2, because a call of one step multiplies through ATen's GEMM instead of the packed
    panels."""
    lengths = [23, 23, 17, 16, 16, 9, 4, 2, 2]
    x = inputs_with_lengths(cell, lengths, SPLITS[split], dtype, seed=1)
    x["xw"] = poison_padding(x["xw"], x["lengths"])
    name = family(cell)
    outputs, grad_inputs, grads = forward_and_backward(cell, x, grad_seed=2)
    pad = padding(x["lengths"], max(lengths))
    for index, output in enumerate(outputs):
        if per_step(index, name):
            assert (output[pad] == 0).all(), f"output {index} is not zero past the lengths"
    for length in sorted(set(lengths)):
        rows = torch.nonzero(x["lengths"] == length).flatten()
        sub = rows_of(x, rows, length)
        sub_grads = [grads[0][:length, rows]] + [g[rows] for g in grads[1:]]
        _, sub_args = op_arguments(cell, sub)
        with poisoned():
            alone = getattr(native, f"{name}_forward")(*sub_args)
            alone_grads = getattr(native, f"{name}_backward")(*backward_arguments(cell, sub, alone, sub_grads))
        for index, (got, want) in enumerate(zip(outputs, alone)):
            got = got[:length, rows] if per_step(index, name) else got[rows]
            assert torch.equal(got, want), f"forward output {index}, rows of length {length}"
        per_step_grads = {"rnn": [0], "lstm": [0], "gru": [0, 1]}[name]
        for index, (got, want) in enumerate(zip(grad_inputs, alone_grads)):
            if name == "lstm" and index == 3:
                continue  # dw_hr sums over rows
            got = got[:length, rows] if index in per_step_grads else got[rows]
            assert torch.equal(got, want), f"backward output {index}, rows of length {length}"


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("cell", CELLS)
def test_unsorted_lengths_equal_the_same_rows_sorted(cell, split, two_threads):
    lengths = [3, 11, 1, 11, 6, 2, 9]
    x = inputs_with_lengths(cell, lengths, SPLITS[split], torch.float32, seed=3)
    order = torch.argsort(x["lengths"], stable=True, descending=True)
    sorted_x = {n: t if t is None or n in ("w_hh", "w_hr", "b_hn") else t.index_select(1 if n == "xw" else 0, order) for n, t in x.items()}
    outputs, grad_inputs, grads = forward_and_backward(cell, x, grad_seed=4)
    sorted_outputs, sorted_grad_inputs, _ = forward_and_backward(cell, sorted_x, grad_seed=4)
    name = family(cell)
    # The same output gradients, permuted like the rows.
    _, sorted_args = op_arguments(cell, sorted_x)
    sorted_grads = [grads[0].index_select(1, order)] + [g.index_select(0, order) for g in grads[1:]]
    with poisoned():
        sorted_grad_inputs = getattr(native, f"{name}_backward")(
            *backward_arguments(cell, sorted_x, sorted_outputs, sorted_grads)
        )
    for index, (got, want) in enumerate(zip(outputs, sorted_outputs)):
        assert torch.equal(got.index_select(1 if per_step(index, name) else 0, order), want), f"forward output {index}"
    per_step_grads = {"rnn": [0], "lstm": [0], "gru": [0, 1]}[name]
    for index, (got, want) in enumerate(zip(grad_inputs, sorted_grad_inputs)):
        if name == "lstm" and index == 3:
            assert torch.equal(got, want), "dw_hr"
            continue
        assert torch.equal(got.index_select(1 if index in per_step_grads else 0, order), want), f"backward output {index}"


@pytest.mark.parametrize("cell", CELLS)
def test_single_step_call_copies_no_weight(cell):
    """A single-step call multiplies by W_hh where it is: no allocation as large as W_hh, forward
    or backward (packing or transposing it would make one)."""
    x = inputs_with_lengths(cell, [1, 1, 1], 160, torch.float32, seed=5)
    x["lengths"] = None
    name, args = op_arguments(cell, x)
    weight_bytes = x["w_hh"].numel() * x["w_hh"].element_size()
    outputs = getattr(native, f"{name}_forward")(*args)
    grads = [torch.ones_like(o) for o in outputs[: 3 if name == "lstm" else 2]]
    backward = backward_arguments(cell, x, outputs, grads)

    def largest_allocation(call) -> int:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
        return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)

    assert 0 < largest_allocation(lambda: getattr(native, f"{name}_forward")(*args)) < weight_bytes
    assert 0 < largest_allocation(lambda: getattr(native, f"{name}_backward")(*backward)) < weight_bytes
