"""Bad input to the ops and unavailable backends: a clear error naming what was expected and what
was given (the modules' errors are torch.nn's: tests/test_nn_errors.py).

Op-level cases check the validation of the custom ops, including lengths out of [1, T]. Backend
cases check unknown and unavailable backends (simulated with monkeypatch, so they hold whatever is
installed), devices that do not exist, and the one-sentence reasons.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import pytest
import torch

import fused_rnn
from fused_rnn import backends, ops
from fused_rnn.parity import Case, make_inputs


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(len(shape)))


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


def test_missing_triton_says_how_to_get_it(fake_backend, monkeypatch):
    fake_backend("triton", types.SimpleNamespace(
        unavailable_reason=lambda device: "Triton could not be imported (No module named 'triton')"))
    monkeypatch.setattr(backends, "_missing_package", lambda name: name == "triton")
    assert "triton" not in fused_rnn.available_backends("cpu")
    model = fused_rnn.LSTM(3, 4, backend="triton")  # accepted: it may run on another device
    with pytest.raises(RuntimeError, match=r"^fused_rnn backend 'triton' cannot run on cpu: Triton could not be "
                                           r"imported \(No module named 'triton'\); to get it, install Triton "
                                           r"\(`pip install triton`\)$"):
        model(randn(5, 2, 3))
    cell = fused_rnn.GRUCell(3, 4, backend="triton")
    with pytest.raises(RuntimeError, match=r"backend 'triton' cannot run on cpu: Triton could not be imported"):
        cell(randn(2, 3))


def test_triton_on_a_cpu_without_the_interpreter_is_one_sentence():
    """Triton is installed, its interpreter is off: say that, and how to turn it on, once."""
    script = (
        "import torch, fused_rnn\n"
        "try:\n    fused_rnn.LSTM(3, 4, backend='triton')(torch.randn(2, 1, 3))\n"
        "except RuntimeError as error:\n    print(error)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        "fused_rnn backend 'triton' cannot run on cpu: Triton runs on CPU tensors only in its interpreter: "
        "set TRITON_INTERPRET=1 before importing fused_rnn"
    )


def test_backend_that_fails_to_import(fake_backend):
    fake_backend("native", import_path="fused_rnn._no_such_extension")
    assert "native" not in fused_rnn.available_backends("cpu")
    assert "could not be imported" in backends.unavailable_reason("native", "cpu")
    message = r"backend 'native' cannot run on cpu: it could not be imported .*; to get it, build the extension"
    with pytest.raises(RuntimeError, match=message):
        fused_rnn.RNN(3, 4, backend="native")(randn(5, 2, 3))
    with pytest.raises(RuntimeError, match=message):
        call_op("rnn_tanh", op_inputs("rnn_tanh"), backend="native")
    with pytest.raises(RuntimeError, match=r"backend 'native': it could not be imported"):
        backends.get_backend("native")


def test_auto_on_cpu_prefers_native_and_never_picks_triton(fake_backend, monkeypatch):
    runs_anywhere = types.SimpleNamespace(unavailable_reason=lambda device: None)
    fake_backend("triton", runs_anywhere)
    fake_backend("native", import_path="fused_rnn._no_such_extension")
    assert fused_rnn.available_backends("cpu") == ["reference", "triton"]
    assert backends.resolve_backend("auto", "cpu") == "reference"
    fake_backend("native", runs_anywhere)
    assert fused_rnn.available_backends("cpu") == ["native", "reference", "triton"]
    assert backends.resolve_backend("auto", "cpu") == "native"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert backends.resolve_backend("auto", "cuda") == "native"


def test_ops_resolve_auto_for_the_device_of_their_inputs():
    x = op_inputs("gru")
    assert torch.equal(call_op("gru", x, backend="auto")[0], call_op("gru", x, backend=backends.resolve_backend("auto", "cpu"))[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA device")
def test_no_backend_runs_on_a_device_that_does_not_exist():
    assert fused_rnn.available_backends("cuda") == []
    reason = backends.device_unavailable_reason("cuda")
    assert reason in (f"this torch ({torch.__version__}) is built without CUDA, so it has no CUDA device",
                      "torch sees no CUDA device (torch.cuda.is_available() is False)")
    for name in backends.BACKEND_NAMES:
        assert backends.unavailable_reason(name, "cuda") == reason
    with pytest.raises(RuntimeError, match=r"^no fused_rnn backend can run on cuda: " + re.escape(reason) + "$"):
        backends.resolve_backend("auto", "cuda")
    with pytest.raises(RuntimeError, match=r"^fused_rnn backend 'reference' cannot run on cuda: " + re.escape(reason) + "$"):
        backends.resolve_backend("reference", "cuda")
