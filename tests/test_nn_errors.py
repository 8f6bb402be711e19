"""Bad input to the modules, run on torch.nn and on fused_rnn side by side: the same exception type
and the same message, on every backend (triton under the interpreter). The checks run before any
kernel: the float64 inputs and models here fail before one runs.

The cases are those of PyTorch's own RNN tests (module_db's error inputs for RNN, GRU, LSTM and the
three cells in torch/testing/_internal/common_modules.py; test_nn.py's test_rnn_args_check,
test_projections_lstm_args_check, test_RNN_cell_no_broadcasting, test_error_RNN_seq_len_zero,
test_projections_errors_on_gru_and_rnn and the device checks of test_rnn_check_device, here with
the meta device as the other device), written anew, plus more of the same kind.

DIFFERENCES lists the inputs where fused_rnn deliberately does not repeat torch.nn, each with why:
torch.nn accepts them and computes something undefined, or fails inside an internal op with a
message that depends on the kernel it picked.
"""

from __future__ import annotations

import contextlib
import functools
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

CLASSES = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")


def randn(*shape, dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(sum(shape) + len(shape))
    return torch.randn(*shape, dtype=dtype, generator=generator).to(device)


def packed(*shape, lengths, dtype=torch.float32, enforce_sorted=True):
    return pack_padded_sequence(randn(*shape, dtype=dtype), lengths, enforce_sorted=enforce_sorted)


@dataclass
class Case:
    """`call(L)` with L torch.nn or fused_rnn (its six classes). `source` names the PyTorch test it
    comes from (None: one of ours)."""

    name: str
    call: Callable
    source: Optional[str] = None


DB = "module_db"
ARGS = "test_rnn_args_check"
PROJ = "test_projections_lstm_args_check"
CELL = "test_RNN_cell_no_broadcasting"
DEVICE = "test_rnn_check_device"


def _module_db_cases() -> list[Case]:
    """common_modules' module_error_inputs_torch_nn_RNN_GRU, for each of RNN, GRU and LSTM, with
    the model in float32 and in float64 (the mismatched input then float64 / float32)."""
    cases = []
    for cls in ("RNN", "GRU", "LSTM"):
        constructors = {
            "hidden-size-zero": (10, 0, 1), "num-layers-zero": (10, 10, 0), "input-size-float": (3.0, 5),
            "input-size-str": ("10", 5), "input-size-zero": (0, 5), "input-size-negative": (-1, 5),
            "hidden-size-float": (3, 5.0),
        }
        for name, args in constructors.items():
            cases.append(Case(f"{cls}-{name}", lambda L, c=cls, a=args: getattr(L, c)(*a), DB))
        for flag, value in (("bias", 0), ("bias", 1), ("bias", "True"), ("batch_first", 0), ("batch_first", 1),
                            ("batch_first", "False")):
            cases.append(Case(f"{cls}-{flag}-{value!r}", lambda L, c=cls, k={flag: value}: getattr(L, c)(3, 5, **k), DB))
        for model, data in ((torch.float32, torch.float64), (torch.float64, torch.float32)):
            cases.append(Case(
                f"{cls}-dtype-{str(model)[6:]}-model-{str(data)[6:]}-input",
                lambda L, c=cls, m=model, d=data: getattr(L, c)(3, 5, dtype=m)(randn(2, 4, 3, dtype=d)), DB,
            ))
    return cases


def _module_db_cell_cases() -> list[Case]:
    """module_error_inputs_torch_nn_RNN_GRU_Cell and _LSTMCell."""
    cases = []
    for cls in ("RNNCell", "GRUCell"):
        cases += [
            Case(f"{cls}-input-size", lambda L, c=cls: getattr(L, c)(10, 20)(randn(3, 11), randn(3, 20)), DB),
            Case(f"{cls}-hidden-size", lambda L, c=cls: getattr(L, c)(10, 20)(randn(3, 10), randn(3, 21)), DB),
            Case(f"{cls}-batch", lambda L, c=cls: getattr(L, c)(10, 20)(randn(3, 10), randn(5, 20)), DB),
            Case(f"{cls}-hidden-4d", lambda L, c=cls: getattr(L, c)(10, 20)(randn(3, 10), randn(3, 1, 1, 20)), DB),
        ]
    for nonlinearity in ("relu", "tanh"):
        cases.append(Case(f"RNNCell-{nonlinearity}-hidden-size",
                          lambda L, n=nonlinearity: L.RNNCell(10, 20, True, n)(randn(3, 10), randn(3, 21)), DB))
    cases += [
        Case("LSTMCell-input-size", lambda L: L.LSTMCell(10, 20)(randn(3, 11), (randn(3, 20), randn(3, 20))), DB),
        Case("LSTMCell-hidden-size", lambda L: L.LSTMCell(10, 20)(randn(3, 10), (randn(3, 21), randn(3, 21))), DB),
        Case("LSTMCell-batch", lambda L: L.LSTMCell(10, 20)(randn(3, 10), (randn(5, 20), randn(5, 20))), DB),
        Case("LSTMCell-hx-4d", lambda L: L.LSTMCell(10, 20)(randn(3, 10), (randn(3, 1, 1, 20), randn(3, 1, 1, 20))), DB),
    ]
    return cases


def _args_check_cases() -> list[Case]:
    """test_rnn_args_check (L=2, B=4, T=6, I=3, H=5, a bad size of 7 in each place) and
    test_projections_lstm_args_check (the same with proj_size=2)."""
    good_input, good_hidden = (6, 4, 3), (2, 4, 5)
    bad = {"input-batch": (1, None), "hidden-batch": (None, 1), "input-size": (2, None),
           "hidden-size": (None, 2), "hidden-layers": (None, 0)}

    def with_bad(shape, dim):
        return shape if dim is None else tuple(7 if i == dim else s for i, s in enumerate(shape))

    cases = []
    for cls in ("RNN", "GRU", "LSTM"):
        for name, (input_dim, hidden_dim) in bad.items():
            x_shape, h_shape = with_bad(good_input, input_dim), with_bad(good_hidden, hidden_dim)
            if cls != "LSTM":
                cases.append(Case(f"{cls}-args-{name}",
                                  lambda L, c=cls, x=x_shape, h=h_shape: getattr(L, c)(3, 5, 2)(randn(*x), randn(*h)), ARGS))
                continue
            variants = {"h": lambda h: (randn(*h), randn(*good_hidden)), "c": lambda h: (randn(*good_hidden), randn(*h))}
            if h_shape == good_hidden:
                variants = {"": lambda h: (randn(*h), randn(*h))}
            for which, states in variants.items():
                cases.append(Case(f"LSTM-args-{name}{'-' + which if which else ''}",
                                  lambda L, x=x_shape, h=h_shape, s=states: L.LSTM(3, 5, 2)(randn(*x), s(h)), ARGS))
    good_h, good_c = (2, 4, 2), (2, 4, 5)
    proj = {
        "input-batch": ((6, 7, 3), good_h, good_c), "hidden-batch": (good_input, (2, 7, 2), (2, 7, 5)),
        "input-size": ((6, 4, 7), good_h, good_c), "hidden-size": (good_input, (2, 4, 7), (2, 4, 7)),
        "hidden-layers": (good_input, (7, 4, 2), (7, 4, 5)), "h-layers-hidden-size": (good_input, (5, 4, 2), good_c),
        "h-layers": (good_input, (7, 4, 2), good_c), "c-layers": (good_input, good_h, (7, 4, 5)),
    }
    for name, (x_shape, h_shape, c_shape) in proj.items():
        cases.append(Case(f"LSTM-proj-args-{name}",
                          lambda L, x=x_shape, h=h_shape, c=c_shape: L.LSTM(3, 5, 2, proj_size=2)(randn(*x), (randn(*h), randn(*c))),
                          PROJ))
    return cases


def _cell_broadcasting_cases() -> list[Case]:
    """test_RNN_cell_no_broadcasting: no broadcasting of a 1-row state, a 1-wide state or input."""
    cases = []
    for cls in ("RNNCell", "GRUCell", "LSTMCell"):
        def run(L, input_shape, bad_state, c=cls, bad_second=False):
            cell = getattr(L, c)(10, 20)
            good = randn(3, 20)
            if c != "LSTMCell":
                return cell(randn(*input_shape), randn(*bad_state))
            states = (good, randn(*bad_state)) if bad_second else (randn(*bad_state), good)
            return cell(randn(*input_shape), states)

        for name, (input_shape, state) in {"state-batch-1": ((3, 10), (1, 20)), "state-width-1": ((3, 10), (3, 1)),
                                           "input-width-1": ((3, 1), (3, 20))}.items():
            cases.append(Case(f"{cls}-{name}", functools.partial(run, input_shape=input_shape, bad_state=state), CELL))
            if cls == "LSTMCell":
                cases.append(Case(f"{cls}-{name}-cx", functools.partial(run, input_shape=input_shape, bad_state=state,
                                                                       bad_second=True), CELL))
    return cases


def _meta(*shape):
    return torch.empty(*shape, device="meta")


OTHER_CASES = [
    Case("RNN-seq-len-zero", lambda L: L.RNN(5, 6, bidirectional=True)(randn(0, 10, 5)), "test_error_RNN_seq_len_zero"),
    Case("LSTM-seq-len-zero", lambda L: L.LSTM(5, 6)(randn(0, 10, 5)), "test_error_RNN_seq_len_zero"),
    Case("GRU-seq-len-zero", lambda L: L.GRU(5, 6, bidirectional=True)(randn(0, 10, 5)), "test_error_RNN_seq_len_zero"),
    Case("RNN-proj-size", lambda L: L.RNN(30, 20, 2, proj_size=10), "test_projections_errors_on_gru_and_rnn"),
    Case("GRU-proj-size", lambda L: L.GRU(30, 20, 2, proj_size=10), "test_projections_errors_on_gru_and_rnn"),
    Case("GRU-proj-size-zero-keyword", lambda L: L.GRU(30, 20, proj_size=0)),
    Case("RNN-input-other-device", lambda L: L.RNN(3, 5, 2)(_meta(6, 4, 3)), DEVICE),
    Case("LSTM-input-other-device", lambda L: L.LSTM(3, 5, 2)(_meta(6, 4, 3)), DEVICE),
    Case("GRU-hidden-other-device", lambda L: L.GRU(3, 5, 2)(randn(6, 4, 3), _meta(2, 4, 5)), DEVICE),
    Case("LSTM-hidden-other-device", lambda L: L.LSTM(3, 5, 2)(randn(6, 4, 3), (_meta(2, 4, 5), _meta(2, 4, 5))), DEVICE),
    Case("LSTM-cell-state-other-device", lambda L: L.LSTM(3, 5, 2)(randn(6, 4, 3), (randn(2, 4, 5), _meta(2, 4, 5))), DEVICE),
    Case("LSTM-proj-hidden-other-device",
         lambda L: L.LSTM(3, 5, 2, proj_size=2)(randn(6, 4, 3), (_meta(2, 4, 2), _meta(2, 4, 5))),
         "test_projections_lstm_check_device"),
    Case("GRU-seq-len-zero-hidden-other-device", lambda L: L.GRU(3, 5)(randn(0, 4, 3), _meta(1, 4, 5))),
    # ranks
    Case("RNN-input-4d", lambda L: L.RNN(3, 5)(randn(2, 4, 3, 1))),
    Case("LSTM-input-4d", lambda L: L.LSTM(3, 5)(randn(2, 4, 3, 1))),
    Case("GRU-input-1d", lambda L: L.GRU(3, 5)(randn(3))),
    Case("RNN-unbatched-3d-hx", lambda L: L.RNN(3, 5)(randn(4, 3), randn(1, 1, 5))),
    Case("GRU-unbatched-3d-hx", lambda L: L.GRU(3, 5)(randn(4, 3), randn(1, 1, 5))),
    Case("LSTM-unbatched-3d-hx", lambda L: L.LSTM(3, 5)(randn(4, 3), (randn(1, 1, 5), randn(1, 1, 5)))),
    Case("RNN-batched-2d-hx", lambda L: L.RNN(3, 5)(randn(4, 2, 3), randn(1, 5))),
    Case("LSTM-batched-2d-hx", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (randn(1, 5), randn(1, 5)))),
    Case("LSTM-batched-mixed-hx", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (randn(1, 2, 5), randn(2, 5)))),
    Case("GRU-packed-2d-hx", lambda L: L.GRU(3, 5)(packed(4, 2, 3, lengths=[4, 2]), randn(2, 5))),
    Case("RNN-packed-3d-data", lambda L: L.RNN(3, 5)(PackedSequence(randn(3, 1, 3), torch.tensor([2, 1])))),
    # sizes and counts
    Case("GRU-batch-first-hidden-batch", lambda L: L.GRU(3, 5, batch_first=True)(randn(2, 4, 3), randn(1, 4, 5))),
    Case("RNN-bidirectional-hidden-layers", lambda L: L.RNN(3, 5, bidirectional=True)(randn(4, 2, 3), randn(1, 2, 5))),
    Case("LSTM-proj-hidden-size", lambda L: L.LSTM(3, 5, proj_size=2)(randn(4, 2, 3), (randn(1, 2, 5), randn(1, 2, 5)))),
    Case("LSTM-proj-cell-size", lambda L: L.LSTM(3, 5, 2, proj_size=2)(randn(6, 4, 3), (randn(2, 4, 2), randn(2, 4, 2)))),
    Case("GRU-packed-hidden-batch", lambda L: L.GRU(3, 5)(packed(4, 2, 3, lengths=[4, 2]), randn(1, 3, 5))),
    Case("RNN-packed-input-size", lambda L: L.RNN(3, 5)(packed(4, 2, 4, lengths=[4, 2]))),
    Case("GRU-packed-input-size", lambda L: L.GRU(3, 5)(packed(4, 2, 4, lengths=[4, 2]))),
    Case("LSTM-three-states", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (randn(1, 2, 5),) * 3)),
    Case("LSTM-seq-len-zero-three-states", lambda L: L.LSTM(3, 5)(randn(0, 4, 3), (randn(1, 4, 5),) * 3)),
    Case("LSTM-one-state", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (randn(1, 2, 5),))),
    Case("LSTM-tensor-hx", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), randn(1, 2, 5))),
    Case("LSTM-unbatched-three-states", lambda L: L.LSTM(3, 5)(randn(4, 3), (randn(1, 5),) * 3)[0].shape),
    Case("GRU-tuple-hx", lambda L: L.GRU(3, 5)(randn(4, 2, 3), (randn(1, 2, 5),))),
    Case("LSTM-input-list", lambda L: L.LSTM(3, 5)([1, 2, 3])),
    Case("LSTM-input-none", lambda L: L.LSTM(3, 5)(None)),
    Case("LSTM-none-in-hx", lambda L: L.LSTM(3, 5)(randn(4, 2, 3), (None, randn(1, 2, 5)))),
    # dtypes
    Case("GRU-integer-input", lambda L: L.GRU(3, 5)(torch.ones(2, 4, 3, dtype=torch.long))),
    Case("RNN-packed-input-dtype", lambda L: L.RNN(3, 5)(packed(4, 2, 3, lengths=[4, 2], dtype=torch.float64))),
    Case("LSTM-packed-input-dtype", lambda L: L.LSTM(3, 5)(packed(4, 2, 3, lengths=[4, 2], dtype=torch.float64))),
    Case("GRU-hidden-dtype", lambda L: L.GRU(3, 5)(randn(2, 4, 3), randn(1, 4, 5, dtype=torch.float64))),
    Case("RNN-hidden-dtype", lambda L: L.RNN(3, 5)(randn(2, 4, 3), randn(1, 4, 5, dtype=torch.float64))),
    Case("GRU-packed-hidden-dtype",
         lambda L: L.GRU(3, 5)(packed(4, 2, 3, lengths=[4, 2]), randn(1, 2, 5, dtype=torch.float64))),
    Case("LSTM-packed-hidden-dtype",
         lambda L: L.LSTM(3, 5)(packed(4, 2, 3, lengths=[4, 2]), (randn(1, 2, 5, dtype=torch.float64), randn(1, 2, 5)))),
    Case("RNN-seq-len-zero-hidden-dtype", lambda L: L.RNN(3, 5)(randn(0, 4, 3), randn(1, 4, 5, dtype=torch.float64))),
    # constructors
    Case("LSTM-num-layers-negative", lambda L: L.LSTM(3, 5, -1)),
    Case("LSTM-num-layers-float", lambda L: L.LSTM(3, 5, 2.0)),
    Case("LSTM-hidden-size-negative", lambda L: L.LSTM(3, -2)),
    Case("LSTM-dropout-negative", lambda L: L.LSTM(3, 5, 2, dropout=-0.1)),
    Case("LSTM-dropout-bool", lambda L: L.LSTM(3, 5, 2, dropout=True)),
    Case("LSTM-dropout-str", lambda L: L.LSTM(3, 5, 2, dropout="0.1")),
    Case("GRU-dropout-above-one", lambda L: L.GRU(3, 5, 2, dropout=2)),
    Case("LSTM-proj-size-equal", lambda L: L.LSTM(3, 5, proj_size=5)),
    Case("LSTM-proj-size-negative", lambda L: L.LSTM(3, 5, proj_size=-1)),
    Case("RNN-nonlinearity", lambda L: L.RNN(3, 5, nonlinearity="sigmoid")),
    Case("RNN-nonlinearity-positional", lambda L: L.RNN(3, 5, 1, "relu").nonlinearity),
    Case("RNN-unknown-keyword", lambda L: L.RNN(3, 5, nonlinear="relu")),
    # cells
    Case("RNNCell-input-dtype", lambda L: L.RNNCell(3, 5)(randn(2, 3, dtype=torch.float64))),
    Case("GRUCell-input-dtype", lambda L: L.GRUCell(3, 5)(randn(2, 3, dtype=torch.float64))),
    Case("LSTMCell-input-dtype", lambda L: L.LSTMCell(3, 5)(randn(2, 3, dtype=torch.float64))),
    Case("GRUCell-input-and-hidden-dtype",
         lambda L: L.GRUCell(3, 5)(randn(2, 3, dtype=torch.float64), randn(2, 5, dtype=torch.float64))),
    Case("GRUCell-hidden-dtype", lambda L: L.GRUCell(3, 5)(randn(2, 3), randn(2, 5, dtype=torch.float64))),
    Case("RNNCell-hidden-dtype", lambda L: L.RNNCell(3, 5)(randn(2, 3), randn(2, 5, dtype=torch.float64))),
    Case("LSTMCell-hidden-dtype", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(2, 5, dtype=torch.float64), randn(2, 5)))),
    Case("GRUCell-integer-input", lambda L: L.GRUCell(3, 5)(torch.ones(2, 3, dtype=torch.long))),
    Case("RNNCell-input-3d", lambda L: L.RNNCell(3, 5)(randn(2, 2, 3))),
    Case("LSTMCell-input-0d", lambda L: L.LSTMCell(3, 5)(torch.tensor(1.0))),
    Case("LSTMCell-cx-4d", lambda L: L.LSTMCell(10, 20)(randn(3, 10), (randn(3, 20), randn(3, 1, 1, 20)))),
    Case("RNNCell-unbatched-input-batched-hidden", lambda L: L.RNNCell(3, 5)(randn(3), randn(1, 5))),
    Case("RNNCell-batched-input-unbatched-hidden", lambda L: L.RNNCell(3, 5)(randn(2, 3), randn(5))),
    Case("RNNCell-unbatched-input-2-row-hidden", lambda L: L.RNNCell(3, 5)(randn(3), randn(2, 5))),
    Case("GRUCell-one-row-input-unbatched-hidden", lambda L: L.GRUCell(3, 5)(randn(1, 3), randn(5))),
    Case("RNNCell-unbatched-hidden-of-batch-size", lambda L: L.RNNCell(3, 5)(randn(5, 3), randn(5))),
    Case("LSTMCell-unbatched-input-batched-states", lambda L: L.LSTMCell(3, 5)(randn(3), (randn(1, 5), randn(1, 5)))),
    Case("LSTMCell-batched-input-unbatched-states", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(5), randn(5)))),
    Case("LSTMCell-mixed-state-ranks", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(2, 5), randn(5)))),
    Case("RNNCell-unbatched-input-size", lambda L: L.RNNCell(3, 5)(randn(4))),
    Case("LSTMCell-one-state", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(2, 5),))),
    Case("LSTMCell-three-states", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(2, 5),) * 3)),
    Case("LSTMCell-tensor-hx", lambda L: L.LSTMCell(3, 5)(randn(2, 3), randn(2, 5))),
    Case("LSTMCell-list-hx", lambda L: L.LSTMCell(3, 5)(randn(2, 3), [randn(2, 5), randn(2, 5)])[0].shape),
    Case("RNNCell-nonlinearity", lambda L: L.RNNCell(3, 5, nonlinearity="sigmoid")(randn(2, 3))),
    Case("RNNCell-nonlinearity-accepted-at-construction", lambda L: L.RNNCell(3, 5, nonlinearity="sigmoid").nonlinearity),
    Case("RNNCell-nonlinearity-before-input-size", lambda L: L.RNNCell(3, 5, nonlinearity="gelu")(randn(2, 4))),
    Case("GRUCell-hidden-size-negative", lambda L: L.GRUCell(3, -1)),
    Case("RNNCell-input-size-float", lambda L: L.RNNCell(3.0, 5)),
    Case("GRUCell-input-list", lambda L: L.GRUCell(3, 5)([1, 2, 3])),
    # inputs torch.nn accepts, that must run (not errors)
    Case("LSTM-empty-batch", lambda L: L.LSTM(3, 5)(randn(5, 0, 3))[0].shape, "test_RNN_input_size_zero"),
    Case("GRU-empty-batch-backward",
         lambda L: L.GRU(3, 5)(randn(5, 0, 3).requires_grad_())[0].sum().backward(), "test_RNN_input_size_zero"),
    Case("GRUCell-empty-batch", lambda L: L.GRUCell(3, 5)(randn(0, 3)).shape),
]

CASES = _module_db_cases() + _module_db_cell_cases() + _args_check_cases() + _cell_broadcasting_cases() + OTHER_CASES


@dataclass(frozen=True)
class Difference:
    """Where fused_rnn does not repeat torch.nn: `ours` is (exception type, message) or None when
    fused_rnn accepts the input; `why` says why. The exception type is torch.nn's unless
    `other_type` (torch.nn's is an accident of an internal op: an IndexError, say)."""

    ours: Optional[tuple]
    why: str
    other_type: bool = False


LSTM_PACKED = ("torch.nn.LSTM runs none of its checks on packed input, so the bad state fails inside an "
               "internal op; fused_rnn checks it as torch.nn's GRU and RNN do")
DIFFERENCES = {
    "LSTM-packed-hidden-batch": Difference(
        (RuntimeError, "Expected hidden[0] size (1, 2, 5), got [1, 3, 5]"), LSTM_PACKED),
    "LSTM-packed-hidden-size": Difference(
        (RuntimeError, "Expected hidden[0] size (1, 2, 5), got [1, 2, 4]"), LSTM_PACKED),
    "LSTM-packed-layers": Difference(
        (RuntimeError, "Expected hidden[0] size (2, 2, 5), got [1, 2, 5]"), LSTM_PACKED),
    "LSTM-packed-2d-hx": Difference(
        (RuntimeError, "Expected hidden[0] size (1, 2, 5), got [2, 5]"), LSTM_PACKED + " (there an IndexError)",
        other_type=True),
    "LSTM-packed-input-size": Difference(
        (RuntimeError, "input.size(-1) must be equal to input_size. Expected 3, got 4"), LSTM_PACKED),
    "GRU-packed-unsorted-larger-hidden-batch": Difference(
        (RuntimeError, "Expected hidden size (1, 2, 5), got [1, 3, 5]"),
        "torch.nn reorders the state by the packing's sorted_indices before checking it, which "
        "silently drops the extra row"),
    "packed-batch-sizes-increasing": Difference(
        (RuntimeError, "PackedSequence batch_sizes must be positive and non-increasing (every row at least one "
                       "step long, rows sorted by decreasing length), got [1, 2]"),
        "torch.nn fails inside its kernel ('output with shape [1, 5] doesn't match the broadcast shape')"),
    "packed-batch-sizes-zero": Difference(
        (RuntimeError, "PackedSequence batch_sizes must be positive and non-increasing (every row at least one "
                       "step long, rows sorted by decreasing length), got [2, 0]"),
        "torch.nn accepts a step of no rows"),
    "packed-too-few-rows": Difference(
        (RuntimeError, "PackedSequence data must have sum(batch_sizes) = 3 rows, got 2"),
        "torch.nn fails inside its kernel ('start (2) + length (1) exceeds dimension size (2).')"),
    "packed-too-many-rows": Difference(
        (RuntimeError, "PackedSequence data must have sum(batch_sizes) = 3 rows, got 4"),
        "torch.nn ignores the extra rows"),
    "packed-int32-batch-sizes": Difference(
        (RuntimeError, "PackedSequence batch_sizes must be a non-empty 1-D int64 CPU tensor, got a 1-D "
                       "torch.int32 tensor of 2 elements on cpu"),
        "torch.nn fails inside its kernel ('expected scalar type Long but found Int')"),
    "packed-empty-batch-sizes": Difference(
        (RuntimeError, "PackedSequence batch_sizes must be a non-empty 1-D int64 CPU tensor, got a 1-D "
                       "torch.int64 tensor of 0 elements on cpu"),
        "torch.nn fails with an IndexError reading batch_sizes[0]", other_type=True),
    "RNN-bidirectional-int": Difference(
        None, "torch.nn accepts bidirectional=1 in the constructor, then fails in its op's argument parser "
              "(TypeError) on the first call; fused_rnn runs it as bidirectional=True"),
    "GRUCell-hidden-other-device": Difference(
        (RuntimeError, "h0 must be on cpu (the device of xw), got meta"),
        "torch.nn's cells check no devices: the message is a tensor op's, whose text differs by device "
        "and version"),
    "LSTMCell-cell-state-dtype": Difference(
        (RuntimeError, "c0 must have dtype torch.float32 (the dtype of xw), got torch.float64"),
        "torch.nn promotes the new cell and hidden states to the cell state's dtype, computing the gates "
        "in the input's; fused_rnn computes in one dtype"),
}
DIFFERENT_CASES = [
    Case("LSTM-packed-hidden-batch", lambda L: L.LSTM(3, 5)(packed(4, 2, 3, lengths=[4, 2]), (randn(1, 3, 5), randn(1, 3, 5)))),
    Case("LSTM-packed-hidden-size", lambda L: L.LSTM(3, 5)(packed(4, 2, 3, lengths=[4, 2]), (randn(1, 2, 4), randn(1, 2, 5)))),
    Case("LSTM-packed-layers", lambda L: L.LSTM(3, 5, 2)(packed(4, 2, 3, lengths=[4, 2]), (randn(1, 2, 5), randn(1, 2, 5)))),
    Case("LSTM-packed-2d-hx", lambda L: L.LSTM(3, 5)(packed(4, 2, 3, lengths=[4, 2]), (randn(2, 5), randn(2, 5)))),
    Case("LSTM-packed-input-size", lambda L: L.LSTM(3, 5)(packed(4, 2, 4, lengths=[4, 2]))),
    Case("GRU-packed-unsorted-larger-hidden-batch",
         lambda L: L.GRU(3, 5)(packed(4, 2, 3, lengths=[2, 4], enforce_sorted=False), randn(1, 3, 5))),
    Case("packed-batch-sizes-increasing", lambda L: L.GRU(3, 5)(PackedSequence(randn(3, 3), torch.tensor([1, 2])))),
    Case("packed-batch-sizes-zero", lambda L: L.GRU(3, 5)(PackedSequence(randn(2, 3), torch.tensor([2, 0])))),
    Case("packed-too-few-rows", lambda L: L.LSTM(3, 5)(PackedSequence(randn(2, 3), torch.tensor([2, 1])))),
    Case("packed-too-many-rows", lambda L: L.LSTM(3, 5)(PackedSequence(randn(4, 3), torch.tensor([2, 1])))),
    Case("packed-int32-batch-sizes",
         lambda L: L.RNN(3, 5)(PackedSequence(randn(3, 3), torch.tensor([2, 1], dtype=torch.int32)))),
    Case("packed-empty-batch-sizes", lambda L: L.LSTM(3, 5)(PackedSequence(randn(0, 3), torch.tensor([], dtype=torch.long)))),
    Case("RNN-bidirectional-int", lambda L: L.RNN(3, 5, bidirectional=1)(randn(2, 1, 3))[1].shape),
    Case("GRUCell-hidden-other-device", lambda L: L.GRUCell(3, 5)(randn(2, 3), _meta(2, 5))),
    Case("LSTMCell-cell-state-dtype", lambda L: L.LSTMCell(3, 5)(randn(2, 3), (randn(2, 5), randn(2, 5, dtype=torch.float64)))),
]
# torch.nn's LSTM message for a state of another dtype comes from its oneDNN kernel
# ('get_mkldnn_dtype: unsupported data type'); with oneDNN off it is the GEMM's, as fused_rnn's.
WITHOUT_ONEDNN = {
    "LSTM-hidden-dtype": lambda L: L.LSTM(3, 5)(randn(2, 4, 3), (randn(1, 4, 5, dtype=torch.float64), randn(1, 4, 5))),
    "LSTM-cell-state-dtype": lambda L: L.LSTM(3, 5)(randn(2, 4, 3), (randn(1, 4, 5), randn(1, 4, 5, dtype=torch.float64))),
}
CASES += [Case(name, call) for name, call in WITHOUT_ONEDNN.items()]


def outcome(call: Callable, library) -> tuple:
    """(exception type, first line of its message), or ("ok", None) when the call succeeds."""
    try:
        call(library)
    except Exception as error:  # the point is to compare whatever is raised
        text = str(error).strip()
        return type(error), text.splitlines()[0] if text else ""
    return "ok", None


def fused_with_backend(backend: str):
    """fused_rnn's six classes with `backend` bound."""
    return types.SimpleNamespace(**{name: functools.partial(getattr(fused_rnn, name), backend=backend) for name in CLASSES})


BACKENDS = ["reference", "native", "triton"]


@pytest.fixture(params=BACKENDS)
def fused(request):
    backend = request.param
    if backend not in fused_rnn.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} cannot run here: {fused_rnn.backends.unavailable_reason(backend, 'cpu')}")
    return backend, fused_with_backend(backend)


@contextlib.contextmanager
def torch_nn_context(name: str):
    if name not in WITHOUT_ONEDNN:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on oneDNN TF32 when the flags are set
        with torch.backends.mkldnn.flags(enabled=False):
            yield


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_same_error_as_torch_nn(case, fused):
    _, library = fused
    with torch_nn_context(case.name):
        theirs = outcome(case.call, nn)
    assert outcome(case.call, library) == theirs


@pytest.mark.parametrize("case", DIFFERENT_CASES, ids=lambda c: c.name)
def test_documented_differences_from_torch_nn(case, fused):
    _, library = fused
    difference = DIFFERENCES[case.name]
    theirs, ours = outcome(case.call, nn), outcome(case.call, library)
    assert theirs != ours, f"torch.nn now does what fused_rnn does; drop {case.name} from DIFFERENCES"
    if difference.ours is None:
        assert ours == ("ok", None)
    else:
        assert ours == difference.ours
        if theirs[0] != "ok" and not difference.other_type:
            assert ours[0] is theirs[0], "the exception type must stay torch.nn's"


def test_the_cases_are_errors_of_torch_nn():
    """Every case but the few marked as accepted inputs makes torch.nn raise; the test counts."""
    accepted = {c.name for c in CASES if c.source == "test_RNN_input_size_zero"} | {
        "GRUCell-empty-batch", "RNN-nonlinearity-positional", "LSTMCell-list-hx", "LSTM-unbatched-three-states",
        "RNNCell-nonlinearity-accepted-at-construction",
    }
    raising = [c for c in CASES if c.name not in accepted]
    for case in raising:
        with torch_nn_context(case.name):
            assert outcome(case.call, nn)[0] != "ok", case.name
    assert len({c.name for c in CASES}) == len(CASES)
    from_pytorch_tests = [c for c in CASES if c.source is not None]
    assert len(from_pytorch_tests) >= 100 and len(raising) >= 180, (len(from_pytorch_tests), len(raising))
