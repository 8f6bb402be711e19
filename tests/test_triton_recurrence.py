"""Parity of the Triton recurrence kernels against the float64 reference, forward and backward.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py) with the plans a GPU
would get (kernels.plan) but float32 products. The interpreter runs programs one after another,
so a launch is persistent (every phase in one launch, the grid barrier between them; one launch per
batch block) only when each batch block is one program; otherwise it runs one launch per phase. Each value of each axis (cell,
H, T, B, lengths, dtype) appears in a lean set of cases rather than in their product, and every
plan mode the planner can pick (test_every_plan_mode_matches_reference) is run for every cell.
Every case runs with NaN-poisoned allocations, so an element a kernel forgets to write fails it.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from fused_rnn import reference
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

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16

# (case, dtype): every cell in float64, float32 and float16; H in {1, 33, 100}; T in {1, 7, 63};
# B in {1, 5} (and 20: two batch blocks); with and without lengths.
CASES = [
    (Case("rnn_tanh", 7, 5, 33, lengths=True), F32),
    (Case("rnn_tanh", 63, 1, 1), F16),
    (Case("rnn_tanh", 7, 5, 33, lengths=True), F64),
    (Case("rnn_relu", 7, 5, 100), F32),
    (Case("rnn_relu", 1, 5, 33, lengths=True), F16),
    (Case("lstm", 7, 5, 33, lengths=True), F32),
    (Case("lstm", 1, 1, 1), F32),
    (Case("lstm", 63, 5, 1, lengths=True), F16),
    (Case("lstm", 7, 1, 100), F16),
    (Case("lstm", 4, 20, 17, lengths=True), F32),
    (Case("lstm", 7, 5, 33, lengths=True), F64),
    (Case("lstm_proj", 7, 5, 33, proj=20, lengths=True), F32),
    (Case("lstm_proj", 7, 1, 100, proj=7), F16),
    (Case("lstm_proj", 5, 5, 33, proj=9, lengths=True), F64),
    (Case("gru", 7, 5, 100, lengths=True), F32),
    (Case("gru", 63, 1, 1, lengths=True), F32),
    (Case("gru", 7, 5, 33, lengths=True), F16),
    (Case("gru", 1, 1, 100), F16),
    (Case("gru", 7, 20, 17, lengths=True), F64),
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
# Every plan mode: each cell run with the candidates of kernels.plan restricted to one mode. The
# default float32 plans (FMA products, streamed W, several programs) are CASES' float32 cases.
# ---------------------------------------------------------------------------------------------


def _restrict_plans(monkeypatch, predicate, tf32: bool = False) -> None:
    """Make kernels.launch choose among the planner's candidates that satisfy `predicate` (planned
    with tf32 products for float32 when `tf32`, so that float32 gets tensor-core plans)."""
    from fused_rnn.kernels import launch, plan

    def plans(cell, direction, batch, hidden, state, projected, like):
        candidates = plan.recurrence_plans(
            cell, direction, batch, hidden, state, projected, launch.DTYPE_NAMES[like.dtype],
            launch.device_limits(like.device), tf32=tf32, interpreting=launch.INTERPRETING,
        )
        chosen = [p for p in candidates if predicate(p)]
        assert chosen, f"no {cell} {direction} plan of this mode at B={batch} H={hidden}"
        return chosen

    monkeypatch.setattr(launch, "plans", plans)


PLAN_MODES = {
    # name: (predicate on the plan, tf32 planning, dtype, one program per batch block)
    "one-program-per-batch-block": (lambda p: True, True, F32, True),
    "resident-split-k": (lambda p: p.resident and p.split > 1, True, F32, False),
    "resident-warps-over-m-n": (lambda p: p.resident and p.split == 1, True, F32, False),
    "streamed-split-k": (lambda p: not p.resident and p.split > 1, True, F32, False),
    "streamed-warps-over-m-n": (lambda p: not p.resident and p.split == 1, True, F32, False),
    "fma-float64": (lambda p: True, False, F64, False),
    "fma-float64-one-program-per-batch-block": (lambda p: True, False, F64, True),
}
MODE_CASES = {
    "rnn_tanh": Case("rnn_tanh", 3, 20, 48, lengths=True, seed=2),
    "lstm": Case("lstm", 3, 20, 48, lengths=True, seed=2),
    "lstm_proj": Case("lstm_proj", 3, 20, 48, proj=32, lengths=True, seed=2),
    "gru": Case("gru", 3, 20, 48, lengths=True, seed=2),
}


@pytest.mark.parametrize("mode", list(PLAN_MODES))
@pytest.mark.parametrize("cell", list(MODE_CASES))
def test_every_plan_mode_matches_reference(cell, mode, monkeypatch):
    """B = 20 spans two batch blocks of 16; H = 48 splits the units over several programs (or, for
    the persistent mode, over one program per batch block)."""
    from fused_rnn.kernels import launch

    predicate, tf32, dtype, one_program = PLAN_MODES[mode]
    in_mode = lambda p: predicate(p) and (p.grid[0] == 1) == one_program  # noqa: E731
    _restrict_plans(monkeypatch, in_mode, tf32)
    launch.LAST_PLANS.clear()
    _assert_parity(MODE_CASES[cell], dtype)
    ran = list(launch.LAST_PLANS.values())
    assert ran and all(in_mode(plan) for plan, _ in ran)


def test_the_interpreter_runs_all_phases_in_one_launch_only_with_one_program_per_batch_block():
    from fused_rnn.kernels import launch

    if DEVICE.type != "cpu":
        pytest.skip("the interpreter's rule")
    launch.LAST_PLANS.clear()
    _assert_parity(Case("lstm", 3, 20, 5), F32)  # H = 5: one program per batch block
    _assert_parity(Case("gru", 3, 5, 100), F32)  # several programs: one launch per phase
    modes = {shape.split(" B=")[0] + f" H={plan.grid[0] > 1}": blocks > 0 for shape, (plan, blocks) in launch.LAST_PLANS.items()}
    assert modes == {"lstm forward H=False": True, "lstm backward H=False": True,
                     "gru forward H=True": False, "gru backward H=True": False}, modes


# ---------------------------------------------------------------------------------------------
# GPU only: the persistent plans at T = 1024, bitwise repeatability, the fallback to one launch per
# phase, and bfloat16 (the interpreter computes bfloat16 dots wrongly). The parity of every backend
# and dtype on CUDA is tests/test_cuda_parity.py's.
# ---------------------------------------------------------------------------------------------

GPU_MODES = [m for m, (_, _, _, one_program) in PLAN_MODES.items() if not one_program]


@pytest.mark.cuda
@pytest.mark.parametrize("mode", GPU_MODES)
@pytest.mark.parametrize("cell", list(MODE_CASES))
def test_plan_modes_run_persistent_at_1024_steps(cell, mode, monkeypatch):
    from fused_rnn.kernels import launch

    predicate, tf32, dtype, _ = PLAN_MODES[mode]
    _restrict_plans(monkeypatch, predicate, tf32)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    launch.LAST_PLANS.clear()
    base = MODE_CASES[cell]
    case = Case(base.cell, 1024, 16, 256, proj=base.proj and 96, lengths=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to one launch per phase
        _assert_parity(case, dtype)
    assert launch.LAST_PLANS and all(blocks == plan.grid[1] for plan, blocks in launch.LAST_PLANS.values())


@pytest.mark.cuda
@pytest.mark.parametrize("cell", list(MODE_CASES))
def test_bfloat16_at_the_judged_shape(cell):
    from fused_rnn.kernels import launch

    launch.LAST_PLANS.clear()
    base = MODE_CASES[cell]
    _assert_parity(Case(base.cell, 256, 16, 768, proj=base.proj and 256, lengths=True), BF16)
    assert all(blocks == plan.grid[1] for plan, blocks in launch.LAST_PLANS.values())


@pytest.mark.cuda
@pytest.mark.parametrize("cell", list(MODE_CASES))
def test_repeated_runs_are_bitwise_identical(cell):
    from fused_rnn.parity import forward_backward

    base = MODE_CASES[cell]
    case = Case(base.cell, 200, 16, 256, proj=base.proj and 96, lengths=True)
    inputs = make_inputs(case, torch.Generator().manual_seed(1))
    name, args = op_arguments(case.cell, inputs)
    outputs = getattr(reference, f"{name}_forward")(*args)
    shapes = [outputs[0].shape, outputs[1].shape] + ([inputs["c0"].shape] if name == "lstm" else [])
    grads = [torch.randn(s) for s in shapes]
    runs = [forward_backward(case, "triton", BF16, DEVICE, inputs, grads) for _ in range(3)]
    for run in runs[1:]:
        for key, value in run.items():
            assert torch.equal(value, runs[0][key]), key


@pytest.mark.cuda
def test_falls_back_to_one_launch_per_phase_with_a_warning_once(monkeypatch):
    """A device too small for even one batch block's programs (one SM holding one program):
    correct results, one warning per shape."""
    from fused_rnn.kernels import launch

    real = launch.device_limits
    monkeypatch.setattr(launch, "device_limits", lambda device: dataclasses.replace(real(device), sms=1, blocks_per_sm=1))
    monkeypatch.setattr(launch, "_CHOICES", {})
    monkeypatch.setattr(launch, "_WARNED", set())
    case = Case("lstm", 33, 40, 256, lengths=True)
    with pytest.warns(RuntimeWarning, match="lstm forward B=40 H=256 P=256 torch.float32 runs one launch per phase") as record:
        _assert_parity(case, F32)
        _assert_parity(case, F32)
    forward_warnings = [w for w in record if "lstm forward" in str(w.message)]
    assert len(forward_warnings) == 1


@pytest.mark.cuda
def test_batch_blocks_run_in_several_persistent_launches_where_not_all_are_resident(monkeypatch):
    """16 SMs holding one program each, plans of 16 programs per batch block and 3 batch blocks:
    three persistent launches, one batch block each, no warning, correct results."""
    from fused_rnn.kernels import launch

    real = launch.device_limits
    _restrict_plans(monkeypatch, lambda p: p.grid[0] == 16 and p.grid[1] == 3)
    monkeypatch.setattr(launch, "device_limits", lambda device: dataclasses.replace(real(device), sms=16, blocks_per_sm=1))
    monkeypatch.setattr(launch, "_CHOICES", {})
    launch.LAST_PLANS.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _assert_parity(Case("gru", 33, 40, 256, lengths=True), F32)
    assert launch.LAST_PLANS and all(blocks == 1 for _, blocks in launch.LAST_PLANS.values())


@pytest.mark.cuda
def test_persistent_variable_0_runs_one_launch_per_phase_with_the_same_results(monkeypatch):
    """FUSED_RNN_TRITON_PERSISTENT=0 (make gpu-check's step mode): every launch one phase, no
    warning, and bitwise the results of the persistent launch (the exchange fixes the order)."""
    from fused_rnn.kernels import launch
    from fused_rnn.parity import forward_backward

    case = Case("lstm", 33, 16, 256, lengths=True)
    inputs = make_inputs(case, torch.Generator().manual_seed(4))
    name, args = op_arguments(case.cell, inputs)
    outputs = getattr(reference, f"{name}_forward")(*args)
    grads = [torch.randn(s) for s in (outputs[0].shape, outputs[1].shape, inputs["c0"].shape)]
    runs = {}
    for value in ("1", "0"):
        monkeypatch.setenv(launch.PERSISTENT_VARIABLE, value)
        launch.LAST_PLANS.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            runs[value] = forward_backward(case, "triton", BF16, DEVICE, inputs, grads)
        assert all((blocks > 0) == (value == "1") for _, blocks in launch.LAST_PLANS.values())
    for key, persistent_value in runs["1"].items():
        assert torch.equal(runs["0"][key], persistent_value), key
