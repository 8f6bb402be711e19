"""Parity of the native CPU recurrence kernels (fused_rnn._C) against the float64 reference,
forward and backward, their saved tensors, gradcheck, and the errors the C++ ops raise.

The CPU kernels split each step into panels of 16 to 64 units (whole vectors of every gate) and
register tiles of 2 to 9 rows: H = 300 and H = 33 end in a partial panel and B = 9 and B = 5 in a
partial tile. Every case runs
with NaN-poisoned allocations, in Python (parity.poisoned_allocations) and in C++ (deterministic
mode fills at::empty with NaN), so an element a kernel forgets to write fails it.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fused_rnn import native, ops, reference
from fused_rnn.parity import (
    Case,
    backward_arguments,
    case_errors,
    make_inputs,
    op_arguments,
    poisoned_allocations,
    relative_error,
    tolerance,
)

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16

# Each value of each axis (cell, T, B, H, lengths, dtype) appears in a lean set of cases.
CASES = [
    (Case("rnn_tanh", 7, 5, 33, lengths=True), F64),
    (Case("rnn_tanh", 63, 1, 1), F32),
    (Case("rnn_tanh", 7, 5, 33, lengths=True), BF16),
    (Case("rnn_relu", 7, 5, 100), F64),
    (Case("rnn_relu", 1, 5, 33, lengths=True), F32),
    (Case("rnn_relu", 7, 9, 300, lengths=True), F16),
    (Case("lstm", 7, 5, 33, lengths=True), F64),
    (Case("lstm", 1, 1, 1), F32),
    (Case("lstm", 63, 5, 1, lengths=True), F32),
    (Case("lstm", 5, 9, 300, lengths=True), F32),
    (Case("lstm", 7, 5, 100), BF16),
    (Case("lstm_proj", 7, 5, 33, proj=20, lengths=True), F64),
    (Case("lstm_proj", 7, 1, 100, proj=7), F32),
    (Case("lstm_proj", 7, 5, 33, proj=13, lengths=True), BF16),
    (Case("gru", 7, 5, 100, lengths=True), F64),
    (Case("gru", 63, 1, 1, lengths=True), F32),
    (Case("gru", 5, 9, 300), F32),
    (Case("gru", 7, 5, 33, lengths=True), BF16),
    (Case("gru", 1, 3, 33), F16),
]


@contextlib.contextmanager
def poisoned():
    """NaN in every fresh allocation, Python's (torch.empty*) and C++'s (at::empty)."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with poisoned_allocations():
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


@pytest.mark.parametrize("case, dtype", CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in CASES])
def test_parity_with_float64_reference(case, dtype):
    with poisoned():
        errors = case_errors(case, "native", dtype)
    limit = tolerance(case, dtype)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= limit, f"{case} {dtype}: {worst} error {errors[worst]:.3g} > {limit:.3g}; {errors}"


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
def test_every_output_and_saved_tensor_matches_reference(cell):
    """Beyond case_errors: the saved tensors (cs, gates; zero past each row's length) and the raw
    outputs of the backward functions (GRU d_hn, LSTM dw_hr), in float64, with the backward fed
    the native forward's own saved tensors."""
    case = Case(cell, 5, 5, 33, proj=9, lengths=True, seed=3)
    generator = torch.Generator().manual_seed(case.seed)
    x = make_inputs(case, generator)
    name, forward_args = op_arguments(cell, x)
    with poisoned():
        ours = getattr(native, f"{name}_forward")(*forward_args)
    exact = getattr(reference, f"{name}_forward")(*forward_args)
    shapes = [exact[0].shape, exact[1].shape] + ([x["c0"].shape] if name == "lstm" else [])
    grads = [torch.randn(s, generator=generator, dtype=F64) for s in shapes]
    with poisoned():
        our_grads = getattr(native, f"{name}_backward")(*backward_arguments(cell, x, ours, grads))
    exact_grads = getattr(reference, f"{name}_backward")(*backward_arguments(cell, x, exact, grads))
    for kind, values, expected in (("forward", ours, exact), ("backward", our_grads, exact_grads)):
        assert len(values) == len(expected)
        for index, (value, want) in enumerate(zip(values, expected)):
            assert value.dtype == want.dtype and value.shape == want.shape, f"{kind} output {index}"
            error = relative_error(value, want)
            assert error <= 1e-12, f"{cell} {kind} output {index}: relative error {error:.3g}"


INFERENCE_CASES = [
    (Case("lstm", 7, 9, 300, lengths=True), F32),
    (Case("lstm", 5, 5, 33, lengths=True), F64),
    (Case("lstm", 6, 5, 100), BF16),
    (Case("lstm_proj", 7, 5, 33, proj=13, lengths=True), F32),
    (Case("gru", 7, 9, 300, lengths=True), F32),
    (Case("gru", 6, 5, 33), BF16),
]


@pytest.mark.parametrize("case, dtype", INFERENCE_CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in INFERENCE_CASES])
def test_inference_ops_equal_the_forward_ops(case, dtype):
    """The inference ops run the same step loop without writing cs and gates: their outputs are
    bitwise those of the forward ops, with every element written (NaN-poisoned allocations)."""
    x = {n: t if t is None or n == "lengths" else t.to(dtype) for n, t in make_inputs(case, torch.Generator().manual_seed(11)).items()}
    name, args = op_arguments(case.cell, x)
    with poisoned():
        inference = getattr(native, f"{name}_inference")(*args)
        forward = getattr(native, f"{name}_forward")(*args)
    assert len(inference) == (3 if name == "lstm" else 2)
    for index, (got, want) in enumerate(zip(inference, forward)):
        assert got.dtype == want.dtype and got.shape == want.shape, f"output {index}"
        assert not got.isnan().any(), f"output {index} has unwritten elements"
        assert torch.equal(got, want), f"output {index} differs"


def test_saved_cell_states_are_float32_for_bfloat16_input():
    case = Case("lstm", 4, 3, 8, lengths=True)
    x = {n: t if t is None or n == "lengths" else t.to(BF16) for n, t in make_inputs(case, torch.Generator()).items()}
    hs, h_n, c_n, cs, gates = native.lstm_forward(*op_arguments("lstm", x)[1])
    assert (hs.dtype, h_n.dtype, c_n.dtype, cs.dtype, gates.dtype) == (BF16, BF16, BF16, F32, BF16)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
def test_gradcheck_in_float64(cell):
    case = Case(cell, 3, 3, 4, proj=2, lengths=True, seed=5)
    x = make_inputs(case, torch.Generator().manual_seed(case.seed))
    x["lengths"] = torch.tensor([3, 1, 2])
    differentiable = [n for n in ("xw", "w_hh", "w_hr", "b_hn", "h0", "c0") if x.get(n) is not None]

    def forward(*values):
        named = dict(x, **dict(zip(differentiable, values)))
        if cell.startswith("rnn"):
            return ops.rnn_forward(named["xw"], named["w_hh"], named["h0"], named["lengths"], cell == "rnn_relu", "native")
        if cell.startswith("lstm"):
            return ops.lstm_forward(named["xw"], named["w_hh"], named["w_hr"], named["h0"], named["c0"], named["lengths"], "native")[:3]
        return ops.gru_forward(named["xw"], named["w_hh"], named["b_hn"], named["h0"], named["lengths"], "native")[:2]

    leaves = [x[n].clone().requires_grad_() for n in differentiable]
    assert torch.autograd.gradcheck(forward, leaves)


# ---------------------------------------------------------------------------------------------
# Bad arguments reaching the C++ ops directly: a RuntimeError naming the op, the argument, what
# was expected and what was given.
# ---------------------------------------------------------------------------------------------

T, B, H, P = 3, 2, 4, 3


def _lstm_args(**changes):
    args = {
        "xw": torch.zeros(T, B, 4 * H),
        "w_hh": torch.zeros(4 * H, H),
        "w_hr": None,
        "h0": torch.zeros(B, H),
        "c0": torch.zeros(B, H),
        "lengths": None,
    }
    args.update(changes)
    return args


LSTM_FORWARD_ERRORS = [
    ({"xw": torch.zeros(T, 4 * H)}, r"xw must be 3-D \[T, B, 4H\], got shape \[3, 16\]"),
    ({"xw": torch.zeros(T, B, 4 * H + 1)}, r"xw must have shape \[T, B, 4H\] \(last dimension a multiple of 4\), got \[3, 2, 17\]"),
    ({"xw": torch.zeros(0, B, 4 * H)}, r"xw must have at least one time step, got shape \[0, 2, 16\]"),
    ({"xw": torch.zeros(T, B, 4 * H, dtype=torch.int32)}, r"xw must have dtype torch.float32, torch.float64, torch.bfloat16 or torch.float16, got torch.int32"),
    ({"w_hh": torch.zeros(4 * H, H + 1)}, r"w_hh must have shape \[4H, P\] = \[16, 4\], got \[16, 5\]"),
    ({"h0": torch.zeros(B, H, dtype=F64)}, r"h0 must have dtype torch.float32 \(the dtype of xw\), got torch.float64"),
    ({"c0": torch.zeros(B + 1, H)}, r"c0 must have shape \[B, H\] = \[2, 4\], got \[3, 4\]"),
    ({"w_hr": torch.zeros(P)}, r"w_hr must be 2-D \[P, H\], got shape \[3\]"),
    ({"w_hr": torch.zeros(P, H)}, r"w_hh must have shape \[4H, P\] = \[16, 3\], got \[16, 4\]"),
    ({"lengths": torch.tensor([3, 1], dtype=torch.int32)}, r"lengths must have dtype torch.int64, got torch.int32"),
    ({"lengths": torch.tensor([3, 1, 2])}, r"lengths must have shape \[B\] = \[2\], got \[3\]"),
    ({"lengths": torch.tensor([0, 2])}, r"lengths must lie in \[1, T\] = \[1, 3\], got values in \[0, 2\]"),
    ({"lengths": torch.tensor([4, 2])}, r"lengths must lie in \[1, T\] = \[1, 3\], got values in \[2, 4\]"),
]


@pytest.mark.parametrize("op", ["native_lstm_forward", "native_lstm_inference"])
@pytest.mark.parametrize("changes, message", LSTM_FORWARD_ERRORS, ids=[m[:40] for _, m in LSTM_FORWARD_ERRORS])
def test_lstm_forward_rejects_bad_arguments(op, changes, message):
    with pytest.raises(RuntimeError, match=rf"fused_rnn::{op}: " + message):
        getattr(torch.ops.fused_rnn, op)(**_lstm_args(**changes))


def test_backward_ops_reject_bad_arguments():
    hs, h0 = torch.zeros(T, B, H), torch.zeros(B, H)
    with pytest.raises(RuntimeError, match=r"native_rnn_backward: grad_hs must have shape \[T, B, H\] = \[3, 2, 4\], got \[3, 2, 5\]"):
        torch.ops.fused_rnn.native_rnn_backward(torch.zeros(T, B, H + 1), h0, torch.zeros(H, H), h0, None, hs, False)
    with pytest.raises(RuntimeError, match=r"native_lstm_backward: cs must have dtype torch.float32 \(the accumulation dtype of hs\), got torch.float16"):
        torch.ops.fused_rnn.native_lstm_backward(
            hs, h0, h0, torch.zeros(4 * H, H), None, h0, h0, None, hs, hs.half(), torch.zeros(T, B, 4 * H)
        )
    with pytest.raises(RuntimeError, match=r"native_lstm_backward: without w_hr the state size P must equal H"):
        short = torch.zeros(T, B, P)
        torch.ops.fused_rnn.native_lstm_backward(
            short, h0[:, :P], h0, torch.zeros(4 * H, P), None, h0[:, :P], h0, None, short, hs, torch.zeros(T, B, 4 * H)
        )
    with pytest.raises(RuntimeError, match=r"native_gru_backward: gates must have shape \[T, B, 4H\] = \[3, 2, 16\], got \[3, 2, 12\]"):
        torch.ops.fused_rnn.native_gru_backward(hs, h0, torch.zeros(3 * H, H), None, h0, None, hs, torch.zeros(T, B, 3 * H))
    for op in ("native_gru_forward", "native_gru_inference"):
        with pytest.raises(RuntimeError, match=rf"{op}: b_hn must have shape \[H\] = \[4\], got \[5\]"):
            getattr(torch.ops.fused_rnn, op)(torch.zeros(T, B, 3 * H), torch.zeros(3 * H, H), torch.zeros(H + 1), h0, None)
