"""The native CUDA recurrence kernels on a GPU (csrc/cuda): parity with the float64 reference in
each regime the planner can pick (weights in registers, shared memory, global memory), long
sequences, per-row lengths, the one-launch-per-step fallback against the cooperative launch
(bitwise), bitwise repeatability, float64 gradcheck, the inference ops, tf32, and the errors of the
CUDA ops. The generic CUDA parity over backends and dtypes is tests/test_cuda_parity.py.

FUSED_RNN_CUDA_REGIME and FUSED_RNN_CUDA_STEP_LAUNCHES (csrc/cuda/launch_plans.h) steer the plans.
Every case runs with NaN-poisoned allocations, in Python and in C++ (deterministic mode fills
at::empty with NaN; warn_only, since cuBLAS is not deterministic without a workspace setting).
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from fused_rnn import native, ops
from fused_rnn.parity import (
    Case,
    backward_arguments,
    case_errors,
    make_inputs,
    op_arguments,
    poisoned_allocations,
    tolerance,
)

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(autouse=True)
def native_cuda():
    """A GPU machine must be able to run the native kernels: unavailable is a failure, not a skip."""
    reason = native.unavailable_reason(CUDA)
    assert reason is None, reason


@contextlib.contextmanager
def poisoned():
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with poisoned_allocations():
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


@contextlib.contextmanager
def planned(regime: str | None = None, step_launches: bool = False):
    """Plans restricted to one regime and/or one launch per step while the block runs."""
    settings = {"FUSED_RNN_CUDA_REGIME": regime, "FUSED_RNN_CUDA_STEP_LAUNCHES": "1" if step_launches else None}
    saved = {name: os.environ.get(name) for name in settings}
    for name, value in settings.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def assert_parity(case: Case, dtype: torch.dtype) -> None:
    with poisoned():
        errors = case_errors(case, "native", dtype, CUDA)
    limit = tolerance(case, dtype, CUDA)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= limit, f"{case} {dtype}: {worst} error {errors[worst]:.3g} > {limit:.3g}; {errors}"


REGIME_CASES = [
    (Case("lstm", 33, 20, 100, lengths=True), BF16),
    (Case("lstm", 7, 5, 33, lengths=True), F32),
    (Case("lstm", 7, 40, 33, lengths=True), F64),
    (Case("gru", 33, 5, 257, lengths=True), F16),
    (Case("gru", 7, 20, 100, lengths=True), F32),
    (Case("gru", 7, 3, 33), F64),
    (Case("rnn_tanh", 63, 40, 33), BF16),
    (Case("rnn_relu", 7, 5, 100, lengths=True), F32),
    (Case("lstm_proj", 7, 5, 33, proj=20, lengths=True), F32),
]


@pytest.mark.parametrize("regime", ["registers", "shared", "global"])
@pytest.mark.parametrize("case, dtype", REGIME_CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in REGIME_CASES])
def test_parity_in_each_regime(case, dtype, regime):
    """Forward and every gradient against the float64 reference with the weights in registers, in
    shared memory and in global memory (exact float32 and float64 have no register engine: the
    planner falls back to its usual plan)."""
    with planned(regime):
        assert_parity(case, dtype)


LONG_CASES = [
    (Case("lstm", 4096, 16, 256), BF16),
    (Case("gru", 4096, 8, 100, lengths=True), F32),
    (Case("rnn_tanh", 2048, 4, 64, lengths=True), F64),
]


@pytest.mark.parametrize("case, dtype", LONG_CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in LONG_CASES])
def test_long_sequences(case, dtype):
    assert_parity(case, dtype)


def test_judged_point_matches_reference():
    """LSTM B16 H768 bf16 (the benchmark's standard point) at T = 256."""
    assert_parity(Case("lstm", 256, 16, 768), BF16)


def _op_outputs(case: Case, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Every output of the forward op and of the backward op (saved tensors included)."""
    x = {n: t if t is None else t.to(CUDA) if n == "lengths" else t.to(CUDA, dtype)
         for n, t in make_inputs(case, torch.Generator().manual_seed(seed)).items()}
    family, args = op_arguments(case.cell, x)
    forward = getattr(native, f"{family}_forward")(*args)
    shapes = [forward[0].shape, forward[1].shape] + ([x["c0"].shape] if family == "lstm" else [])
    generator = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(s, generator=generator, dtype=F64).to(CUDA, dtype) for s in shapes]
    backward = getattr(native, f"{family}_backward")(*backward_arguments(case.cell, x, forward, grads))
    return [*forward, *backward]


BITWISE_CASES = [
    (Case("lstm", 33, 40, 100, lengths=True), BF16),
    (Case("gru", 33, 5, 257, lengths=True), F32),
    (Case("rnn_relu", 33, 17, 64), F64),
]


@pytest.mark.parametrize("case, dtype", BITWISE_CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in BITWISE_CASES])
def test_step_launches_equal_the_cooperative_launch_bitwise(case, dtype):
    """One launch per step (the fallback where the grid is not resident) computes exactly what the
    persistent kernel computes."""
    with poisoned():
        persistent = _op_outputs(case, dtype)
        with planned(step_launches=True):
            stepped = _op_outputs(case, dtype)
    for index, (a, b) in enumerate(zip(persistent, stepped)):
        assert not a.isnan().any(), f"output {index} has unwritten elements"
        assert torch.equal(a, b), f"output {index} differs"


@pytest.mark.parametrize("case, dtype", BITWISE_CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in BITWISE_CASES])
def test_bitwise_repeatable(case, dtype):
    first, second = _op_outputs(case, dtype), _op_outputs(case, dtype)
    for index, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"output {index} differs between two identical calls"


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
def test_inference_ops_equal_the_forward_ops(cell):
    case = Case(cell, 9, 20, 33, proj=7, lengths=True)
    x = {n: t if t is None else t.to(CUDA) if n == "lengths" else t.to(CUDA, BF16)
         for n, t in make_inputs(case, torch.Generator().manual_seed(4)).items()}
    family, args = op_arguments(cell, x)
    if family == "rnn":
        pytest.skip("the vanilla RNN has no inference op")
    with poisoned():
        inference = getattr(native, f"{family}_inference")(*args)
        forward = getattr(native, f"{family}_forward")(*args)
    for index, (got, want) in enumerate(zip(inference, forward)):
        assert not got.isnan().any() and torch.equal(got, want), f"output {index}"


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "lstm_proj", "gru"])
def test_gradcheck_in_float64(cell):
    case = Case(cell, 3, 3, 4, proj=2, lengths=True, seed=5)
    x = {n: t if t is None else t.to(CUDA) for n, t in make_inputs(case, torch.Generator().manual_seed(5)).items()}
    x["lengths"] = torch.tensor([3, 1, 2], device=CUDA)
    differentiable = [n for n in ("xw", "w_hh", "w_hr", "b_hn", "h0", "c0") if x.get(n) is not None]

    def forward(*values):
        named = dict(x, **dict(zip(differentiable, values)))
        family, args = op_arguments(cell, named)
        outputs = getattr(ops, f"{family}_forward")(*args, "native")
        return outputs[:3] if family == "lstm" else outputs[:2]

    assert torch.autograd.gradcheck(forward, [x[n].clone().requires_grad_() for n in differentiable])


def test_tf32_only_when_torch_allows_it():
    """float32 runs exact FMA unless torch.backends.cuda.matmul.allow_tf32, then tf32 tensor
    cores: both within their tolerance, and they differ."""
    case = Case("lstm", 17, 16, 256, lengths=True)
    was = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert_parity(case, F32)
        exact = _op_outputs(case, F32)
        torch.backends.cuda.matmul.allow_tf32 = True
        assert_parity(case, F32)
        tf32 = _op_outputs(case, F32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was
    assert not torch.equal(exact[0], tf32[0])


def test_cuda_ops_reject_bad_arguments():
    x = torch.zeros(3, 2, 16, device=CUDA)
    w_hh, h0, c0 = torch.zeros(16, 4, device=CUDA), torch.zeros(2, 4, device=CUDA), torch.zeros(2, 4, device=CUDA)
    with pytest.raises(RuntimeError, match=r"native_lstm_forward: w_hh must be on cuda:0 \(the device of xw\), got cpu"):
        torch.ops.fused_rnn.native_lstm_forward(x, w_hh.cpu(), None, h0, c0, None)
    lengths = torch.tensor([4, 1], device=CUDA)
    with pytest.raises(RuntimeError, match=r"native_lstm_forward: lengths must lie in \[1, T\] = \[1, 3\], got values in \[1, 4\]"):
        torch.ops.fused_rnn.native_lstm_forward(x, w_hh, None, h0, c0, lengths)
    with pytest.raises(RuntimeError, match=r"native_gru_forward: xw must have shape \[T, B, 3H\]"):
        torch.ops.fused_rnn.native_gru_forward(x, torch.zeros(12, 4, device=CUDA), None, h0, None)
