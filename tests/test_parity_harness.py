"""The parity harness (fused_rnn.parity) that `fused-rnn check` and the backend tests rely on:
the reference passes it in float32/float64 within DESIGN.md's tolerances, and it catches a wrong
gradient, an unwritten output (NaN-poisoned allocations), NaN, inf and shape mismatches."""

from __future__ import annotations

import math
import types

import pytest
import torch

from fused_rnn import backends, reference
from fused_rnn.parity import Case, case_errors, poisoned_allocations, relative_error, tolerance, torch_nn_error

BACKEND = "reference"

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


def test_half_tolerance_is_twice_torch_nn_error_in_that_dtype():
    case = Case("lstm", 5, 3, 7, lengths=True, seed=16)
    limit = tolerance(case, torch.bfloat16)
    assert limit == pytest.approx(2 * torch_nn_error(case, torch.bfloat16))
    assert 1e-4 < limit < 0.1
    assert max(case_errors(case, BACKEND, torch.bfloat16).values()) <= limit
    # torch.nn in float64 does the op of the case exactly: the comparison itself adds no error.
    assert torch_nn_error(case, torch.float64) < 1e-12


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
