"""Bad input: a clear error of torch.nn's type, naming what was expected and what was given.

Module cases run on torch.nn too, to check the exception type is the one torch.nn raises; our
message is then matched. Op-level cases check the validation of the custom ops, including lengths
out of [1, T]. Backend cases check unknown and unavailable backends (simulated with monkeypatch,
so they hold whatever is installed).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn import backends, ops
from fused_rnn.parity import Case, make_inputs


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(len(shape)))


@dataclass
class BadCall:
    """`call(lib)` with lib = torch.nn or fused_rnn raises `error` with a message matching `match`
    (for fused_rnn). `torch_nn_raises`: torch.nn raises the same type (False where it accepts the
    input silently)."""

    name: str
    call: Callable
    error: type
    match: str
    torch_nn_raises: bool = True


MODULE_CASES = [
    BadCall("feature-size", lambda L: L.LSTM(3, 5)(randn(4, 2, 4)), RuntimeError,
            r"input.size\(-1\) must be equal to input_size. Expected 3, got 4"),
    BadCall("feature-size-unbatched", lambda L: L.GRU(3, 5)(randn(4, 4)), RuntimeError, r"Expected 3, got 4"),
    BadCall("feature-size-packed", lambda L: L.RNN(3, 5)(pack_padded_sequence(randn(4, 2, 4), [4, 2])),
            RuntimeError, r"Expected 3, got 4"),
    BadCall("h0-shape", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (randn(1, 2, 4), randn(1, 2, 5))), RuntimeError,
            r"Expected hidden size \(1, 2, 5\), got \[1, 2, 4\]"),
    BadCall("c0-shape", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (randn(1, 2, 5), randn(1, 2, 4))), RuntimeError,
            r"Expected cell size \(1, 2, 5\), got \[1, 2, 4\]"),
    BadCall("h0-proj-shape", lambda L: L.LSTM(3, 5, proj_size=2)(randn(4, 2, 3), (randn(1, 2, 5), randn(1, 2, 5))),
            RuntimeError, r"Expected hidden size \(1, 2, 2\), got \[1, 2, 5\]"),
    BadCall("h0-layers", lambda L: L.GRU(3, 5, num_layers=2)(randn(4, 2, 3), randn(1, 2, 5)), RuntimeError,
            r"Expected hidden size \(2, 2, 5\), got \[1, 2, 5\]"),
    BadCall("h0-directions", lambda L: L.RNN(3, 5, bidirectional=True)(randn(4, 2, 3), randn(1, 2, 5)),
            RuntimeError, r"Expected hidden size \(2, 2, 5\), got \[1, 2, 5\]"),
    BadCall("batch-mismatch", lambda L: L.GRU(3, 5)(randn(4, 2, 3), randn(1, 3, 5)), RuntimeError,
            r"Expected hidden size \(1, 2, 5\), got \[1, 3, 5\]"),
    BadCall("batch-mismatch-batch-first", lambda L: L.GRU(3, 5, batch_first=True)(randn(2, 4, 3), randn(1, 4, 5)),
            RuntimeError, r"Expected hidden size \(1, 2, 5\), got \[1, 4, 5\]"),
    BadCall("batch-mismatch-packed",
            lambda L: L.LSTM(3, 5)(pack_padded_sequence(randn(4, 2, 3), [4, 2]), (randn(1, 3, 5), randn(1, 3, 5))),
            RuntimeError, r"Expected hidden size \(1, 2, 5\), got \[1, 3, 5\]"),
    BadCall("input-dtype", lambda L: L.LSTM(3, 5)(randn(4, 2, 3, dtype=torch.float64)), ValueError,
            r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    BadCall("state-dtype", lambda L: L.GRU(3, 5)(randn(4, 2, 3), randn(1, 2, 5, dtype=torch.float64)), RuntimeError,
            r"hidden state dtype torch.float32 \(the input dtype\), got torch.float64"),
    BadCall("input-4d", lambda L: L.RNN(3, 5)(randn(4, 2, 3, 1)), ValueError, r"Expected input to be 2D or 3D, got 4D"),
    BadCall("unbatched-input-3d-hx", lambda L: L.RNN(3, 5)(randn(4, 3), randn(1, 1, 5)), RuntimeError,
            r"For unbatched 2-D input, hx should also be 2-D but got \(3-D\)"),
    BadCall("batched-input-2d-hx", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (randn(1, 5), randn(1, 5))), RuntimeError,
            r"For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 2-D\)"),
    BadCall("no-time-steps", lambda L: L.LSTM(3, 5)(randn(0, 2, 3)), RuntimeError,
            r"Expected sequence length to be larger than 0 in LSTM, got input of shape \[0, 2, 3\]"),
    BadCall("packed-increasing-batch-sizes",
            lambda L: L.GRU(3, 5)(PackedSequence(randn(3, 3), torch.tensor([1, 2]))), RuntimeError,
            r"batch_sizes must be positive and non-increasing .* got \[1, 2\]"),
    BadCall("packed-row-shorter-than-one-step",
            lambda L: L.GRU(3, 5)(PackedSequence(randn(2, 3), torch.tensor([2, 0]))), RuntimeError,
            r"batch_sizes must be positive and non-increasing .* got \[2, 0\]", torch_nn_raises=False),
    BadCall("packed-rows-mismatch",
            lambda L: L.LSTM(3, 5)(PackedSequence(randn(2, 3), torch.tensor([2, 1]))), RuntimeError,
            r"data must have sum\(batch_sizes\) = 3 rows, got 2"),
    BadCall("packed-batch-sizes-int32",
            lambda L: L.RNN(3, 5)(PackedSequence(randn(3, 3), torch.tensor([2, 1], dtype=torch.int32))),
            RuntimeError, r"batch_sizes must be a non-empty 1-D int64 CPU tensor, got a 1-D torch.int32"),
    # Constructors
    BadCall("proj-size-too-large", lambda L: L.LSTM(3, 5, proj_size=5), ValueError,
            r"proj_size has to be smaller than hidden_size, got proj_size=5 and hidden_size=5"),
    BadCall("proj-size-negative", lambda L: L.LSTM(3, 5, proj_size=-1), ValueError,
            r"proj_size should be a positive integer or zero"),
    BadCall("gru-proj-size", lambda L: L.GRU(3, 5, proj_size=2), ValueError,
            r"proj_size argument is only supported for LSTM, not RNN or GRU"),
    BadCall("rnn-proj-size", lambda L: L.RNN(3, 5, nonlinearity="relu", proj_size=1), ValueError,
            r"proj_size argument is only supported for LSTM, not RNN or GRU"),
    BadCall("dropout-range", lambda L: L.GRU(3, 5, num_layers=2, dropout=1.5), ValueError,
            r"dropout should be a number in range \[0, 1\].*got 1.5"),
    BadCall("hidden-size-zero", lambda L: L.RNN(3, 0), ValueError, r"hidden_size must be greater than zero, got 0"),
    BadCall("num-layers-zero", lambda L: L.LSTM(3, 4, num_layers=0), ValueError,
            r"num_layers must be greater than zero, got 0"),
    BadCall("nonlinearity", lambda L: L.RNN(3, 4, nonlinearity="sigmoid"), ValueError,
            r"Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'."),
    # Cells
    BadCall("cell-feature-size", lambda L: L.LSTMCell(3, 5)(randn(2, 4)), RuntimeError,
            r"input has inconsistent input_size: got 4 expected 3"),
    BadCall("cell-hidden-size", lambda L: L.GRUCell(3, 5)(randn(2, 3), randn(2, 4)), RuntimeError,
            r"hidden state has inconsistent shape: got \[2, 4\] expected \[2, 5\]"),
    BadCall("cell-batch-mismatch", lambda L: L.RNNCell(3, 5)(randn(2, 3), randn(3, 5)), RuntimeError,
            r"got \[3, 5\] expected \[2, 5\]"),
    BadCall("cell-lstm-cx-batch", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(2, 5), randn(3, 5))), RuntimeError,
            r"got \[3, 5\] expected \[2, 5\]"),
    BadCall("cell-input-3d", lambda L: L.RNNCell(3, 5)(randn(2, 2, 3)), ValueError,
            r"RNNCell: Expected input to be 1D or 2D, got 3D instead"),
    BadCall("cell-hidden-3d", lambda L: L.GRUCell(3, 5)(randn(2, 3), randn(1, 2, 5)), ValueError,
            r"GRUCell: Expected hidden to be 1D or 2D, got 3D instead"),
    BadCall("cell-lstm-cx-3d", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(2, 5), randn(1, 2, 5))), ValueError,
            r"LSTMCell: Expected hx\[1\] to be 1D or 2D, got 3D instead"),
    BadCall("cell-hidden-dims-differ", lambda L: L.RNNCell(3, 5)(randn(2, 3), randn(5)), RuntimeError,
            r"RNNCell: Expected hidden to be 2D like the input, got 1D"),
    BadCall("cell-input-dtype", lambda L: L.RNNCell(3, 5)(randn(2, 3, dtype=torch.float64)), RuntimeError,
            r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
]


@pytest.mark.parametrize("case", MODULE_CASES, ids=lambda c: c.name)
def test_module_errors(case):
    if case.torch_nn_raises:
        with pytest.raises(case.error):
            case.call(nn)
    else:
        case.call(nn)
    with pytest.raises(case.error, match=case.match):
        case.call(fused_rnn)


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------

OP_CELLS = ["rnn_tanh", "lstm_proj", "gru"]


def op_inputs(cell: str) -> dict:
    """Valid float64 inputs for `cell`: T=4, B=3, H=5 (proj 2), lengths [4, 1, 2]."""
    inputs = make_inputs(Case(cell, 4, 3, 5, proj=2, seed=7), torch.Generator().manual_seed(7))
    inputs["lengths"] = torch.tensor([4, 1, 2])
    return inputs


def call_op(cell: str, x: dict, backend: str = "reference"):
    if cell.startswith("rnn"):
        return ops.rnn_forward(x["xw"], x["w_hh"], x["h0"], x["lengths"], False, backend)
    if cell.startswith("lstm"):
        return ops.lstm_forward(x["xw"], x["w_hh"], x["w_hr"], x["h0"], x["c0"], x["lengths"], backend)
    return ops.gru_forward(x["xw"], x["w_hh"], x["b_hn"], x["h0"], x["lengths"], backend)


LENGTHS_RANGE = r"lengths must lie in \[1, 4\] \(T = 4 time steps\), got values in "
OP_CASES = [
    ("lengths-above-T", lambda x: {"lengths": torch.tensor([5, 1, 2])}, LENGTHS_RANGE + r"\[1, 5\]"),
    ("lengths-zero", lambda x: {"lengths": torch.tensor([4, 0, 2])}, LENGTHS_RANGE + r"\[0, 4\]"),
    ("lengths-negative", lambda x: {"lengths": torch.tensor([-3, 1, 2])}, LENGTHS_RANGE + r"\[-3, 2\]"),
    ("lengths-int32", lambda x: {"lengths": torch.tensor([4, 1, 2], dtype=torch.int32)},
     r"lengths must have dtype torch.int64, got torch.int32"),
    ("lengths-batch", lambda x: {"lengths": torch.tensor([4, 1])}, r"lengths must have shape \[3\], got \[2\]"),
    ("xw-gates", lambda x: {"xw": x["xw"][..., 1:]},
     r"xw must have shape \[T, B, \d\*H\] = \[T, B, \d+\], got \[4, 3, \d+\]"),
    ("xw-2d", lambda x: {"xw": x["xw"][0]}, r"xw must have shape \[T, B, \d\*H\]"),
    ("xw-no-steps", lambda x: {"xw": x["xw"][:0]}, r"xw must have at least one time step, got shape \[0, 3, \d+\]"),
    ("xw-integer", lambda x: {n: t.long() for n, t in x.items() if t is not None and t.is_floating_point()},
     r"xw must be a floating-point tensor, got torch.int64"),
    ("h0-batch", lambda x: {"h0": x["h0"][:2]}, r"h0 must have shape \[3, \d\], got \[2, \d\]"),
    ("h0-dtype", lambda x: {"h0": x["h0"].float()},
     r"h0 must have dtype torch.float64 \(the dtype of xw\), got torch.float32"),
    ("w_hh-dtype", lambda x: {"w_hh": x["w_hh"].float()},
     r"w_hh must have dtype torch.float64 \(the dtype of xw\), got torch.float32"),
]
LSTM_CASES = [
    ("c0-shape", lambda x: {"c0": x["c0"][:, :4]}, r"c0 must have shape \[3, 5\], got \[3, 4\]"),
    ("w_hr-shape", lambda x: {"w_hr": x["w_hr"][:, :4]}, r"w_hr must have shape \[2, 5\], got \[2, 4\]"),
    ("w_hh-shape", lambda x: {"w_hh": x["w_hh"][:, :1]}, r"w_hh must have shape \[20, 2\], got \[20, 1\]"),
]
GRU_CASES = [
    ("b_hn-shape", lambda x: {"b_hn": x["b_hn"][:4]}, r"b_hn must have shape \[5\], got \[4\]"),
    ("w_hh-shape", lambda x: {"w_hh": x["w_hh"][:12]}, r"w_hh must have shape \[15, 5\], got \[12, 5\]"),
]


@pytest.mark.parametrize(
    "cell, change, match",
    [(cell, change, match) for cell in OP_CELLS for _, change, match in OP_CASES]
    + [("lstm_proj", change, match) for _, change, match in LSTM_CASES]
    + [("gru", change, match) for _, change, match in GRU_CASES],
    ids=[f"{cell}-{name}" for cell in OP_CELLS for name, _, _ in OP_CASES]
    + [f"lstm_proj-{name}" for name, _, _ in LSTM_CASES]
    + [f"gru-{name}" for name, _, _ in GRU_CASES],
)
def test_op_errors(cell, change, match):
    x = op_inputs(cell)
    call_op(cell, x)  # the valid inputs pass
    with pytest.raises(RuntimeError, match=match):
        call_op(cell, {**x, **change(x)})


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------

CHOICES = r"backend must be one of \['auto', 'reference', .*\], got 'cuda'"


def test_unknown_backend():
    with pytest.raises(ValueError, match=CHOICES):
        fused_rnn.LSTM(3, 4, backend="cuda")
    with pytest.raises(ValueError, match=CHOICES):
        fused_rnn.GRUCell(3, 4, backend="cuda")
    model = fused_rnn.RNN(3, 4)
    with pytest.raises(ValueError, match=CHOICES):
        model.backend = "cuda"
    assert model.backend == "auto"
    with pytest.raises(ValueError, match=CHOICES):
        call_op("gru", op_inputs("gru"), backend="cuda")
    with pytest.raises(ValueError, match=CHOICES):
        backends.unavailable_reason("cuda", "cpu")


@pytest.fixture
def fake_backend(monkeypatch):
    """Install `module` as backend `name` (or make its import fail) for one test."""

    def install(name: str, module=None, import_path: str | None = None) -> None:
        monkeypatch.delitem(backends._modules, name, raising=False)
        monkeypatch.delitem(backends._import_errors, name, raising=False)
        if module is not None:
            monkeypatch.setitem(backends._modules, name, module)
        if import_path is not None:
            monkeypatch.setitem(backends.BACKEND_MODULES, name, import_path)

    return install


def test_unavailable_backend_says_why_and_how(fake_backend):
    fake_backend("triton", types.SimpleNamespace(unavailable_reason=lambda device: "Triton is not installed"))
    assert "triton" not in fused_rnn.available_backends("cpu")
    model = fused_rnn.LSTM(3, 4, backend="triton")  # accepted: it may run on another device
    with pytest.raises(RuntimeError, match=r"backend 'triton' cannot run on cpu: Triton is not installed; "
                                           r"to get it, install Triton \(`pip install triton`\)"):
        model(randn(5, 2, 3))
    cell = fused_rnn.GRUCell(3, 4, backend="triton")
    with pytest.raises(RuntimeError, match=r"backend 'triton' cannot run on cpu: Triton is not installed"):
        cell(randn(2, 3))


def test_backend_that_fails_to_import(fake_backend):
    fake_backend("native", import_path="fused_rnn._no_such_extension")
    assert "native" not in fused_rnn.available_backends("cpu")
    assert "could not be imported" in backends.unavailable_reason("native", "cpu")
    with pytest.raises(RuntimeError, match=r"backend 'native' cannot run on cpu: it could not be imported .*"
                                           r"to get it, build the extension"):
        fused_rnn.RNN(3, 4, backend="native")(randn(5, 2, 3))
    with pytest.raises(RuntimeError, match=r"backend 'native': it could not be imported"):
        call_op("rnn_tanh", op_inputs("rnn_tanh"), backend="native")


def test_auto_on_cpu_prefers_native_and_never_picks_triton(fake_backend):
    runs_anywhere = types.SimpleNamespace(unavailable_reason=lambda device: None)
    fake_backend("triton", runs_anywhere)
    fake_backend("native", import_path="fused_rnn._no_such_extension")
    assert fused_rnn.available_backends("cpu") == ["reference", "triton"]
    assert backends.resolve_backend("auto", "cpu") == "reference"
    fake_backend("native", runs_anywhere)
    assert fused_rnn.available_backends("cpu") == ["native", "reference", "triton"]
    assert backends.resolve_backend("auto", "cpu") == "native"
    assert backends.resolve_backend("auto", "cuda") == "native"
