"""A cell step that nothing records (no_grad, no profiler, no trace) calls the Python
implementations of its ops directly (op_library.call_unrecorded), skipping the dispatcher's
wrapper of a Python op; a step that autograd or the profiler records goes through the ops, with
the same results."""

from __future__ import annotations

import pytest
import torch

import fused_rnn
from fused_rnn import native, op_library

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

# cell class, the recurrence op its no-grad step runs
CELLS = {
    "lstm": (fused_rnn.LSTMCell, "fused_rnn::lstm_inference"),
    "gru": (fused_rnn.GRUCell, "fused_rnn::gru_inference"),
    "rnn": (fused_rnn.RNNCell, "fused_rnn::rnn_forward"),
}


def _counted_direct_calls(monkeypatch, names):
    """Replace each op's entry in call_unrecorded's table by a counting wrapper -> the counts;
    calls through the dispatcher run the registered implementation and are not counted."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        function = op_library._implementations[name]

        def counted(*args, _name=name, _function=function):
            counts[_name] += 1
            return _function(*args)

        monkeypatch.setitem(op_library._implementations, name, counted)
    return counts


def _cell_and_inputs(kind):
    cell_class, op = CELLS[kind]
    torch.manual_seed(0)
    cell = cell_class(7, 11, backend="native")
    return cell, op, torch.randn(5, 7), torch.randn(5, 11)


def _states(output):
    return output if isinstance(output, tuple) else (output,)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_no_grad_step_calls_the_implementations_directly(monkeypatch, kind):
    cell, op, x, h = _cell_and_inputs(kind)
    state = (h, torch.randn(5, 11)) if kind == "lstm" else h
    counts = _counted_direct_calls(monkeypatch, ["fused_rnn::linear", op])
    with torch.no_grad():
        direct = cell(x, state)
    assert counts == {"fused_rnn::linear": 1, op: 1}
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        through_the_ops = cell(x, state)  # the profiler keeps the ops
    assert counts == {"fused_rnn::linear": 1, op: 1}
    for got, want in zip(_states(direct), _states(through_the_ops), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_recorded_step_goes_through_the_ops(monkeypatch, kind):
    cell, op, x, h = _cell_and_inputs(kind)
    state = (h, torch.randn(5, 11)) if kind == "lstm" else h
    counts = _counted_direct_calls(monkeypatch, ["fused_rnn::linear", op])
    assert _states(cell(x, state))[0].grad_fn is not None
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        cell(x, state)
    assert set(counts.values()) == {0}, counts
    names = {event.name for event in prof.events()}
    assert {"fused_rnn::linear", op} <= names, names
