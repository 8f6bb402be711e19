"""The custom ops: gradcheck / gradgradcheck in float64, torch.library.opcheck, the parity harness.

Every forward op and every backward op, with and without per-row lengths, on the reference backend.
The backward ops are checked as functions of (output gradients, forward inputs): the saved tensors
they also take are recomputed from the forward inputs inside the checked function, as autograd
hands them over.
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from fused_rnn import backends, ops, reference
from fused_rnn.parity import (
    CELLS,
    Case,
    case_errors,
    make_inputs,
    poisoned_allocations,
    relative_error,
    tolerance,
)

BACKEND = "reference"
LENGTHS = [False, True]


def small_inputs(cell: str, with_lengths: bool, seed: int) -> dict:
    """float64 inputs small enough for numerical Jacobians: T=3, B=2, H=2 (proj 1); lengths [3, 1]."""
    inputs = make_inputs(Case(cell, 3, 2, 2, proj=1, seed=seed), torch.Generator().manual_seed(seed))
    inputs["lengths"] = torch.tensor([3, 1]) if with_lengths else None
    return inputs


def forward_arg_names(cell: str) -> list[str]:
    if cell.startswith("rnn"):
        return ["xw", "w_hh", "h0"]
    if cell.startswith("lstm"):
        return ["xw", "w_hh", "w_hr", "h0", "c0"]
    return ["xw", "w_hh", "b_hn", "h0"]


def call_forward(cell: str, x: dict, lengths):
    """The forward op of `cell` on the named inputs -> its full output tuple."""
    if cell.startswith("rnn"):
        return ops.rnn_forward(x["xw"], x["w_hh"], x["h0"], lengths, cell == "rnn_relu", BACKEND)
    if cell.startswith("lstm"):
        return ops.lstm_forward(x["xw"], x["w_hh"], x["w_hr"], x["h0"], x["c0"], lengths, BACKEND)
    return ops.gru_forward(x["xw"], x["w_hh"], x["b_hn"], x["h0"], lengths, BACKEND)


def differentiable_outputs(cell: str, outputs):
    """hs, h_n (, c_n): the outputs gradients flow from (LSTM cs/gates and GRU gates are saved)."""
    return tuple(outputs[:3]) if cell.startswith("lstm") else tuple(outputs[:2])


def call_backward(cell: str, grads: dict, x: dict, lengths):
    """The backward op of `cell`, with the saved tensors recomputed from x by the forward op."""
    with torch.no_grad():
        saved = call_forward(cell, x, lengths)
    if cell.startswith("rnn"):
        return ops.rnn_backward(
            grads["hs"], grads["h_n"], x["xw"], x["w_hh"], x["h0"], lengths, saved[0], cell == "rnn_relu", BACKEND
        )
    if cell.startswith("lstm"):
        hs, _, _, cs, gates = saved
        return ops.lstm_backward(
            grads["hs"], grads["h_n"], grads["c_n"], x["xw"], x["w_hh"], x["w_hr"], x["h0"], x["c0"],
            lengths, hs, cs, gates, BACKEND,
        )
    hs, _, gates = saved
    return ops.gru_backward(
        grads["hs"], grads["h_n"], x["xw"], x["w_hh"], x["b_hn"], x["h0"], lengths, hs, gates, BACKEND
    )


def output_grad_names(cell: str) -> list[str]:
    return ["hs", "h_n", "c_n"] if cell.startswith("lstm") else ["hs", "h_n"]


def forward_function(cell: str, x: dict):
    """(function of the differentiable forward inputs, those inputs as leaves requiring grad)."""
    names = [n for n in forward_arg_names(cell) if x[n] is not None]
    leaves = tuple(x[n].clone().requires_grad_() for n in names)

    def function(*values):
        return differentiable_outputs(cell, call_forward(cell, {**x, **dict(zip(names, values))}, x["lengths"]))

    return function, leaves


def backward_function(cell: str, x: dict, seed: int):
    """(function of output gradients and forward inputs -> the backward op's outputs, the leaves)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        outputs = differentiable_outputs(cell, call_forward(cell, x, x["lengths"]))
    grad_names = output_grad_names(cell)
    grads = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in outputs]
    input_names = [n for n in forward_arg_names(cell) if x[n] is not None]
    names = grad_names + input_names
    leaves = tuple(t.clone().requires_grad_() for t in grads + [x[n] for n in input_names])

    def function(*values):
        named = dict(zip(names, values))
        result = call_backward(cell, named, {**x, **named}, x["lengths"])
        # LSTM without projection returns an empty dw_hr placeholder: not a differentiable output.
        return tuple(r for r in result if r.numel() > 0)

    return function, leaves


def case_seed(cell: str, with_lengths: bool, salt: int) -> int:
    return salt + 31 * CELLS.index(cell) + with_lengths


# ---------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_lengths", LENGTHS, ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_op_gradcheck_and_gradgradcheck(cell, with_lengths):
    function, leaves = forward_function(cell, small_inputs(cell, with_lengths, case_seed(cell, with_lengths, 100)))
    assert gradcheck(function, leaves)
    assert gradgradcheck(function, leaves)


@pytest.mark.parametrize("with_lengths", LENGTHS, ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_backward_op_gradcheck_and_gradgradcheck(cell, with_lengths):
    seed = case_seed(cell, with_lengths, 200)
    function, leaves = backward_function(cell, small_inputs(cell, with_lengths, seed), seed)
    assert gradcheck(function, leaves)
    assert gradgradcheck(function, leaves)


def test_third_derivative_through_the_op_equals_the_reference():
    """Derivatives of every order through the ops equal those through the plain reference."""
    x = small_inputs("lstm_proj", True, 300)
    names = forward_arg_names("lstm_proj")

    def third_derivative(forward):
        leaves = {n: x[n].clone().requires_grad_() for n in names}
        hs, h_n, c_n = forward(leaves)[:3]
        first = torch.autograd.grad((hs.sin().sum() + (h_n * c_n).sum()), leaves["xw"], create_graph=True)[0]
        second = torch.autograd.grad(first.pow(2).sum(), leaves["w_hh"], create_graph=True)[0]
        return torch.autograd.grad(second.pow(2).sum(), [leaves["h0"], leaves["w_hr"]])

    through_op = third_derivative(lambda v: call_forward("lstm_proj", {**x, **v}, x["lengths"]))
    through_reference = third_derivative(
        lambda v: reference.lstm_forward(v["xw"], v["w_hh"], v["w_hr"], v["h0"], v["c0"], x["lengths"])
    )
    for got, want in zip(through_op, through_reference):
        assert relative_error(got, want) <= 1e-10


# ---------------------------------------------------------------------------------------------
# opcheck
# ---------------------------------------------------------------------------------------------


def opcheck_forward_args(cell: str, x: dict) -> tuple:
    lengths = x["lengths"]
    x = {n: None if t is None or n == "lengths" else t.clone().requires_grad_() for n, t in x.items()}
    if cell.startswith("rnn"):
        return (x["xw"], x["w_hh"], x["h0"], lengths, cell == "rnn_relu", BACKEND)
    if cell.startswith("lstm"):
        return (x["xw"], x["w_hh"], x["w_hr"], x["h0"], x["c0"], lengths, BACKEND)
    return (x["xw"], x["w_hh"], x["b_hn"], x["h0"], lengths, BACKEND)


def opcheck_backward_args(cell: str, x: dict, seed: int) -> tuple:
    lengths = x["lengths"]
    with torch.no_grad():
        saved = call_forward(cell, x, lengths)
    generator = torch.Generator().manual_seed(seed)
    grads = [
        torch.randn(o.shape, generator=generator, dtype=torch.float64).requires_grad_()
        for o in differentiable_outputs(cell, saved)
    ]
    x = {n: None if t is None or n == "lengths" else t.clone().requires_grad_() for n, t in x.items()}
    if cell.startswith("rnn"):
        return (*grads, x["xw"], x["w_hh"], x["h0"], lengths, saved[0], cell == "rnn_relu", BACKEND)
    if cell.startswith("lstm"):
        hs, _, _, cs, gates = saved
        return (*grads, x["xw"], x["w_hh"], x["w_hr"], x["h0"], x["c0"], lengths, hs, cs, gates, BACKEND)
    hs, _, gates = saved
    return (*grads, x["xw"], x["w_hh"], x["b_hn"], x["h0"], lengths, hs, gates, BACKEND)


def op_pair(cell: str):
    family = cell.split("_")[0]
    return getattr(ops, f"{family}_forward"), getattr(ops, f"{family}_backward")


# test_aot_dispatch_dynamic traces the double backward through the reference loop and costs
# seconds: it runs on each op with and without lengths, once per op variant (w_hr or not).
TRACED = {("rnn_tanh", False), ("rnn_relu", True), ("lstm", False), ("lstm_proj", True), ("gru", False), ("gru", True)}
QUICK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")
ALL_UTILS = (*QUICK_UTILS, "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("with_lengths", LENGTHS, ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_opcheck(cell, with_lengths):
    seed = case_seed(cell, with_lengths, 400)
    case = Case(cell, 2, 3, 3, proj=2, lengths=with_lengths, seed=seed)
    x = make_inputs(case, torch.Generator().manual_seed(seed))
    if with_lengths:
        x["lengths"] = torch.tensor([2, 1, 2])
    utils = ALL_UTILS if (cell, with_lengths) in TRACED else QUICK_UTILS
    forward_op, backward_op = op_pair(cell)
    torch.library.opcheck(forward_op, opcheck_forward_args(cell, x), test_utils=utils)
    torch.library.opcheck(backward_op, opcheck_backward_args(cell, x, seed), test_utils=utils)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_opcheck_half_inputs(cell):
    """The fake functions give the dtypes the reference returns for half inputs (LSTM cs float32)."""
    x = make_inputs(Case(cell, 3, 2, 3, lengths=True, seed=5), torch.Generator().manual_seed(5))
    x = {n: t if t is None or n == "lengths" else t.to(torch.bfloat16) for n, t in x.items()}
    forward_op, _ = op_pair(cell)
    torch.library.opcheck(forward_op, opcheck_forward_args(cell, x), test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# The parity harness
# ---------------------------------------------------------------------------------------------

HARNESS_CASES = [
    Case("rnn_tanh", 7, 5, 33, seed=11),
    Case("rnn_relu", 1, 3, 5, lengths=True, seed=12),
    Case("lstm", 7, 3, 33, lengths=True, seed=13),
    Case("lstm_proj", 9, 5, 7, proj=3, seed=14),
    Case("gru", 7, 5, 33, lengths=True, seed=15),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", HARNESS_CASES, ids=str)
def test_reference_passes_its_own_parity_check(case, dtype):
    errors = case_errors(case, BACKEND, dtype)
    expected_keys = {"out0", "out1", "d_xw", "d_w_hh", "d_h0"}
    assert expected_keys <= set(errors)
    limit = tolerance(case, dtype)
    assert limit == (1e-5 if dtype == torch.float32 else 1e-10)
    assert max(errors.values()) <= limit, errors
    if dtype == torch.float32:
        # float32 rounding is visible: the harness does compare against float64.
        assert max(errors.values()) > 1e-12


def test_half_tolerance_is_relative_to_the_references_own_error():
    case = Case("lstm", 5, 3, 7, seed=16)
    limit = tolerance(case, torch.bfloat16)
    assert 1e-5 < limit < 0.1
    assert max(case_errors(case, BACKEND, torch.bfloat16).values()) <= limit


def test_relative_error_rejects_nan_inf_and_wrong_shapes():
    value = torch.ones(3, dtype=torch.float64)
    assert relative_error(value, value) == 0
    assert relative_error(value * 1.001, value) == pytest.approx(1e-3)
    assert relative_error(torch.tensor([1.0, math.nan, 1.0]), value) == math.inf
    assert relative_error(torch.tensor([1.0, math.inf, 1.0]), value) == math.inf
    assert relative_error(torch.ones(4), value) == math.inf


def wrapped_reference(**overrides) -> types.SimpleNamespace:
    """A backend module: the reference with some functions replaced."""
    functions = {
        name: getattr(reference, name)
        for name in ("rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward")
    }
    functions.update(overrides)
    return types.SimpleNamespace(unavailable_reason=lambda device: None, **functions)


@pytest.fixture
def register_backend(monkeypatch):
    def register(name: str, module) -> None:
        monkeypatch.setitem(backends.BACKEND_MODULES, name, f"tests.{name}")
        monkeypatch.setitem(backends._modules, name, module)

    return register


def test_harness_catches_a_wrong_gradient(register_backend):
    def off_by_one_percent(*args):
        dxw, dh0 = reference.rnn_backward(*args)
        return dxw * 1.01, dh0

    register_backend("skewed", wrapped_reference(rnn_backward=off_by_one_percent))
    errors = case_errors(Case("rnn_tanh", 5, 3, 7, seed=17), "skewed", torch.float32)
    assert errors["out0"] <= 1e-5 and errors["out1"] <= 1e-5
    assert errors["d_xw"] == pytest.approx(1e-2, rel=1e-2)
    assert errors["d_w_hh"] > 1e-3


def test_harness_catches_unwritten_outputs(register_backend):
    def forgets_last_step(xw, w_hh, b_hn, h0, lengths):
        hs, h_n, gates = reference.gru_forward(xw, w_hh, b_hn, h0, lengths)
        unwritten = torch.empty_like(hs)
        unwritten[:-1] = hs[:-1]
        return unwritten, h_n, gates

    register_backend("forgetful", wrapped_reference(gru_forward=forgets_last_step))
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)
    with poisoned_allocations():
        assert torch.isnan(torch.empty(3)).all()
        assert torch.isnan(torch.empty_like(torch.zeros(2))).all()
        assert torch.isnan(torch.zeros(1).new_empty(2)).all()
        errors = case_errors(Case("gru", 4, 3, 5, seed=18), "forgetful", torch.float32)
    assert errors["out0"] == math.inf
    assert (torch.empty, torch.empty_like, torch.Tensor.new_empty) == originals
