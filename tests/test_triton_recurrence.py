"""Parity of the Triton recurrence kernels against the float64 reference, forward and backward.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py), where the tiles are 16
batch rows by 32 hidden units: H = 33 and 100 split the units over 2 and 4 programs (step mode,
one launch per step), B = 20 splits the rows over 2 programs, and H <= 32 with B <= 16 is one
program running the whole sequence in one launch. Each value of each axis (cell, H, T, B, lengths,
dtype) appears in a lean set of cases rather than in their product. Every case runs with
NaN-poisoned allocations, so an element a kernel forgets to write fails it.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn import ops, reference
from fused_rnn.backends import get_backend, unavailable_reason
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

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REASON = unavailable_reason("triton", DEVICE)
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton backend unavailable: {REASON}")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (case, dtype): every cell in float32 and float16; H in {1, 33, 100}; T in {1, 7, 63};
# B in {1, 5} (and 20: two row blocks); with and without lengths.
CASES = [
    (Case("rnn_tanh", 7, 5, 33, lengths=True), F32),
    (Case("rnn_tanh", 63, 1, 1), F16),
    (Case("rnn_relu", 7, 5, 100), F32),
    (Case("rnn_relu", 1, 5, 33, lengths=True), F16),
    (Case("lstm", 7, 5, 33, lengths=True), F32),
    (Case("lstm", 1, 1, 1), F32),
    (Case("lstm", 63, 5, 1, lengths=True), F16),
    (Case("lstm", 7, 1, 100), F16),
    (Case("lstm", 4, 20, 17, lengths=True), F32),
    (Case("lstm_proj", 7, 5, 33, proj=20, lengths=True), F32),
    (Case("lstm_proj", 7, 1, 100, proj=7), F16),
    (Case("gru", 7, 5, 100, lengths=True), F32),
    (Case("gru", 63, 1, 1, lengths=True), F32),
    (Case("gru", 7, 5, 33, lengths=True), F16),
    (Case("gru", 1, 1, 100), F16),
]


def _assert_parity(case: Case, dtype: torch.dtype) -> None:
    with poisoned_allocations():
        errors = case_errors(case, "triton", dtype, DEVICE)
    limit = tolerance(case, dtype, DEVICE)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= limit, f"{case} {dtype}: {worst} error {errors[worst]:.3g} > {limit:.3g}; {errors}"


@pytest.mark.parametrize("case, dtype", CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in CASES])
def test_parity_with_float64_reference(case, dtype):
    _assert_parity(case, dtype)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
def test_every_output_and_saved_tensor_matches_reference(cell):
    """Beyond parity.case_errors (outputs and input gradients): the saved tensors (cs, gates, zero
    past each row's length) and the raw outputs of the backward functions (GRU d_hn, LSTM dw_hr),
    with the backward fed the kernels' own saved tensors."""
    case = Case(cell, 5, 5, 33, proj=9, lengths=True, seed=3)
    generator = torch.Generator().manual_seed(case.seed)
    inputs = make_inputs(case, generator)
    exact = {n: t if t is None or n == "lengths" else t.float().double() for n, t in inputs.items()}
    ours = {n: t if t is None or n == "lengths" else t.to(DEVICE, F32) for n, t in inputs.items()}
    ours["lengths"] = None if inputs["lengths"] is None else inputs["lengths"].to(DEVICE)
    name, exact_args = op_arguments(cell, exact)
    _, our_args = op_arguments(cell, ours)
    backend = get_backend("triton")
    with poisoned_allocations():
        our_outputs = getattr(backend, f"{name}_forward")(*our_args)
    exact_outputs = getattr(reference, f"{name}_forward")(*exact_args)
    state_shapes = [exact_outputs[0].shape, exact_outputs[1].shape] + ([exact_args[4].shape] if name == "lstm" else [])
    grads = [torch.randn(s, generator=generator, dtype=torch.float64) for s in state_shapes]
    with poisoned_allocations():
        our_grads = getattr(backend, f"{name}_backward")(
            *backward_arguments(cell, ours, our_outputs, [g.to(DEVICE, F32) for g in grads])
        )
    exact_grads = getattr(reference, f"{name}_backward")(*backward_arguments(cell, exact, exact_outputs, grads))
    for kind, values, expected in (("forward", our_outputs, exact_outputs), ("backward", our_grads, exact_grads)):
        assert len(values) == len(expected)
        for index, (value, want) in enumerate(zip(values, expected)):
            error = relative_error(value, want)
            assert error <= 1e-5, f"{cell} {kind} output {index}: relative error {error:.3g}"


@pytest.mark.parametrize(
    "case",
    [Case("lstm", 7, 5, 33, lengths=True), Case("lstm_proj", 5, 5, 33, proj=9, lengths=True), Case("gru", 7, 20, 17, lengths=True)],
    ids=str,
)
def test_inference_functions_equal_the_forward_functions(case):
    """Without the saved tensors (SAVE=False: cs and gates are never touched) the kernels compute the
    same outputs, bitwise."""
    inputs = make_inputs(case, torch.Generator().manual_seed(case.seed))
    args = {n: t if t is None or n == "lengths" else t.to(DEVICE, F32) for n, t in inputs.items()}
    args["lengths"] = None if inputs["lengths"] is None else inputs["lengths"].to(DEVICE)
    name, our_args = op_arguments(case.cell, args)
    backend = get_backend("triton")
    with poisoned_allocations():
        inference = getattr(backend, f"{name}_inference")(*our_args)
        forward = getattr(backend, f"{name}_forward")(*our_args)
    assert len(inference) == (3 if name == "lstm" else 2)
    for index, (got, want) in enumerate(zip(inference, forward)):
        assert torch.equal(got, want), f"output {index}"


def test_float64_is_refused_with_the_dtypes_it_supports():
    xw, w_hh, h0 = torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="xw of dtype float32, float16 or bfloat16, got torch.float64"):
        ops.rnn_forward(xw.to(DEVICE), w_hh.to(DEVICE), h0.to(DEVICE), None, False, "triton")


def test_backward_checks_name_the_argument():
    from fused_rnn import kernels

    hs, w_hh, h0 = torch.zeros(2, 3, 4), torch.zeros(4, 4), torch.zeros(3, 4)
    with pytest.raises(RuntimeError, match=r"grad_hs must have shape \[2, 3, 4\], got \[2, 3, 5\]"):
        kernels.rnn_backward(torch.zeros(2, 3, 5), h0, w_hh, h0, None, hs, False)
    with pytest.raises(RuntimeError, match="cs must have dtype torch.float32, got torch.float16"):
        kernels.lstm_backward(
            hs, h0, h0, torch.zeros(16, 4), None, h0, h0, None, hs, hs.half(), torch.zeros(2, 3, 16)
        )
    with pytest.raises(RuntimeError, match=r"gates must have shape \[2, 3, 16\], got \[2, 3, 12\]"):
        kernels.gru_backward(hs, h0, torch.zeros(12, 4), None, h0, None, hs, torch.zeros(2, 3, 12))


# ---------------------------------------------------------------------------------------------
# GPU only: bfloat16 (the interpreter computes bfloat16 dots wrongly), the persistent mode, and
# bitwise repeatability.
# ---------------------------------------------------------------------------------------------

GPU_CASES = [c for c, _ in CASES] + [Case("lstm", 33, 40, 256, lengths=True), Case("gru", 17, 70, 130, lengths=True)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_parity_on_cuda(case, dtype):
    _assert_parity(case, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_persistent_mode_parity_at_1024_steps(cell, dtype, monkeypatch):
    from fused_rnn.kernels.launch import plan_launch

    monkeypatch.setenv("FUSED_RNN_TRITON_PERSISTENT", "1")
    case = Case(cell, 1024, 16, 256, lengths=True)
    xw = torch.empty(1, case.batch, 1, dtype=dtype, device=DEVICE)
    assert plan_launch(case.batch, case.hidden, case.hidden, xw).persistent
    _assert_parity(case, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("persistent", ["0", "1"])
def test_repeated_runs_are_bitwise_identical(persistent, monkeypatch):
    from fused_rnn.parity import forward_backward, make_inputs

    monkeypatch.setenv("FUSED_RNN_TRITON_PERSISTENT", persistent)
    case = Case("lstm", 200, 16, 256, lengths=True)
    inputs = make_inputs(case, torch.Generator().manual_seed(1))
    grads = [torch.randn(s) for s in ([200, 16, 256], [16, 256], [16, 256])]
    runs = [forward_backward(case, "triton", BF16, DEVICE, inputs, grads) for _ in range(3)]
    for run in runs[1:]:
        for name, value in run.items():
            assert torch.equal(value, runs[0][name]), name
