"""Eager calls skip the dispatcher's wrapper of the Python ops. A single step of the native CPU
backend, of a cell or of a module called one step at a time, runs the native C++ ops directly
(fused_rnn.native_step), skipping the op layer: with no graph where nothing records (no_grad, or
no argument requiring grad), else as one graph node that applies the ops' autograd formulas.
Longer calls apply the ops' formulas as autograd.Functions (op_library.call_eagerly). Under the
profiler every step goes through the ops, with the same results and gradients, bit for bit."""

from __future__ import annotations

import pytest
import torch

import fused_rnn
from fused_rnn import native, native_step, op_library

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

# cell class, the ops a no-grad step runs through the op layer
CELLS = {
    "lstm": (fused_rnn.LSTMCell, {"fused_rnn::lstm_input_inference"}),
    "gru": (fused_rnn.GRUCell, {"fused_rnn::linear", "fused_rnn::gru_inference"}),
    "rnn": (fused_rnn.RNNCell, {"fused_rnn::linear", "fused_rnn::rnn_forward"}),
}
FORWARD_OPS = {"lstm": "lstm_forward", "gru": "gru_forward", "rnn": "rnn_forward"}
MODULES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn": fused_rnn.RNN}
PROFILE = {"activities": [torch.profiler.ProfilerActivity.CPU]}


def _counted_implementation_calls(monkeypatch):
    """Replace each op's entry in call_eagerly's table by a counting wrapper -> the counts;
    calls through the dispatcher run the registered implementation and are not counted."""
    counts = dict.fromkeys(op_library._implementations, 0)
    for name, function in list(op_library._implementations.items()):

        def counted(*args, _name=name, _function=function):
            counts[_name] += 1
            return _function(*args)

        monkeypatch.setitem(op_library._implementations, name, counted)
    return counts


def _native_steps(monkeypatch):
    """Wrap native_step.run -> the list of whether each call ran the step."""
    ran = []
    run = native_step.run

    def counted(*args):
        result = run(*args)
        ran.append(result is not None)
        return result

    monkeypatch.setattr(native_step, "run", counted)
    return ran


def _cell_and_inputs(kind, bias=True):
    cell_class, ops = CELLS[kind]
    torch.manual_seed(0)
    cell = cell_class(7, 11, bias=bias, backend="native")
    h = torch.randn(5, 11)
    state = (h, torch.randn(5, 11)) if kind == "lstm" else h
    return cell, ops, torch.randn(5, 7), state


def _tensors(output):
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for part in output for t in _tensors(part)]


def _assert_identical(got, want):
    for a, b in zip(_tensors(got), _tensors(want), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_no_grad_cell_step_runs_the_native_ops_directly(monkeypatch, kind):
    cell, ops, x, state = _cell_and_inputs(kind)
    counts = _counted_implementation_calls(monkeypatch)
    ran = _native_steps(monkeypatch)
    with torch.no_grad():
        direct = cell(x, state)
    assert ran == [True] and set(counts.values()) == {0}, counts
    with torch.no_grad(), torch.profiler.profile(**PROFILE) as prof:
        through_the_ops = cell(x, state)
    assert ran == [True, False]
    assert ops <= {event.name for event in prof.events()}
    _assert_identical(direct, through_the_ops)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_a_no_grad_module_step_runs_the_native_ops_directly(monkeypatch, kind):
    torch.manual_seed(1)
    module = MODULES[kind](6, 9, num_layers=2, batch_first=True, backend="native")
    sequence = torch.randn(4, 3, 6)
    x = sequence[:, 1:2]  # one step of a batch-first sequence: not contiguous
    state = torch.randn(2, 4, 9)
    state = (state, torch.randn(2, 4, 9)) if kind == "lstm" else state
    ran = _native_steps(monkeypatch)
    with torch.no_grad():
        direct = module(x, state)
        assert ran == [True, True]
        with torch.profiler.profile(**PROFILE):
            through_the_ops = module(x, state)
    assert ran == [True, True, False, False]
    _assert_identical(direct, through_the_ops)
    reference = getattr(torch.nn, type(module).__name__)(6, 9, num_layers=2, batch_first=True)
    reference.load_state_dict(module.state_dict())
    with torch.no_grad():
        for got, want in zip(_tensors(direct), _tensors(reference(x, state)), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["several steps", "lengths", "reference backend", "proj_size", "profiler", "profiler, grad", "autocast"],
)
def test_the_native_step_runs_only_where_it_matches_the_op_layer(monkeypatch, case):
    torch.manual_seed(2)
    steps = 3 if case in ("several steps", "lengths") else 1
    backend = "reference" if case == "reference backend" else "native"
    proj_size = 4 if case == "proj_size" else 0
    module = fused_rnn.LSTM(6, 9, proj_size=proj_size, backend=backend)
    x = torch.randn(steps, 5, 6)
    if case == "lengths":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([3, 3, 2, 2, 1]))
    ran = _native_steps(monkeypatch)
    if case == "profiler, grad":
        with torch.profiler.profile(**PROFILE):
            module(x)
    elif case == "profiler":
        with torch.no_grad(), torch.profiler.profile(**PROFILE):
            module(x)
    elif case == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            module(x)
    else:
        with torch.no_grad():
            module(x)
    assert not any(ran), ran


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_profiled_step_goes_through_the_ops(monkeypatch, kind):
    cell, ops, x, state = _cell_and_inputs(kind)
    counts = _counted_implementation_calls(monkeypatch)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), torch.profiler.profile(**PROFILE) as prof:
            cell(x, state)
        assert set(counts.values()) == {0}, counts
        expected = {"fused_rnn::linear", f"fused_rnn::{FORWARD_OPS[kind]}"} if grad else ops
        assert expected <= {event.name for event in prof.events()}


def _first_and_second_order_grads(cell, x, state):
    """The gradients of a loss of one step with respect to x, the states and every parameter, and
    those of the sum of the first-order ones (double backward)."""
    inputs = [x, *_tensors(state), *cell.parameters()]
    loss = sum((t * t.cos()).sum() for t in _tensors(cell(x, state)))
    first = torch.autograd.grad(loss, inputs, create_graph=True)
    second = torch.autograd.grad(sum(g.sum() for g in first), inputs, allow_unused=True)
    return list(first), [g for g in second if g is not None]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_recorded_step_is_one_node_with_the_gradients_of_the_ops(kind, bias):
    cell, _, x, state = _cell_and_inputs(kind, bias)
    x.requires_grad_()
    state = tuple(t.requires_grad_() for t in _tensors(state))
    state = state if kind == "lstm" else state[0]
    output = _tensors(cell(x, state))[0]
    assert type(output.grad_fn).__name__ == "RecordedNativeStepBackward"
    first, second = _first_and_second_order_grads(cell, x, state)
    with torch.profiler.profile(**PROFILE):
        output = _tensors(cell(x, state))[0]
        assert type(output.grad_fn).__name__.startswith("GeneratedBackwardFor_fused_rnn_")
        first_through_the_ops, second_through_the_ops = _first_and_second_order_grads(cell, x, state)
    _assert_identical(first, first_through_the_ops)
    # The node's second-order gradients add the same terms as the ops', in another order: the
    # part through the node's outputs and the part through its recomputed graph each go through
    # their own projection GEMM, where the ops' graph sums them before one.
    assert len(second) > 2 and len(second) == len(second_through_the_ops)
    for got, want in zip(second, second_through_the_ops):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


FROZEN = {
    "input and input weights": ("x", "weight_ih", "bias_ih"),
    "recurrent weights": ("weight_hh", "bias_hh"),
    "biases": ("bias_ih", "bias_hh"),
    "every parameter": ("weight_ih", "bias_ih", "weight_hh", "bias_hh"),
}


@pytest.mark.parametrize("frozen", sorted(FROZEN))
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_a_recorded_step_computes_the_gradients_of_what_requires_grad(kind, frozen):
    """Frozen parameters (and an input that does not require grad) leave their gradients out of
    the node's backward (its output mask): the gradients of the others are the ops', bit for bit."""
    cell, _, x, state = _cell_and_inputs(kind)
    state = tuple(t.requires_grad_() for t in _tensors(state))
    state = state if kind == "lstm" else state[0]
    x.requires_grad_("x" not in FROZEN[frozen])
    for name, parameter in cell.named_parameters():
        parameter.requires_grad_(name not in FROZEN[frozen])
    wanted = [t for t in [x, *_tensors(state), *cell.parameters()] if t.requires_grad]

    def gradients():
        loss = sum((t * t.cos()).sum() for t in _tensors(cell(x, state)))
        return torch.autograd.grad(loss, wanted)

    assert type(_tensors(cell(x, state))[0].grad_fn).__name__ == "RecordedNativeStepBackward"
    direct = gradients()
    with torch.profiler.profile(**PROFILE):
        through_the_ops = gradients()
    _assert_identical(direct, through_the_ops)
    assert all(g.abs().sum() > 0 for g in direct)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_a_recorded_module_step_has_the_gradients_of_the_ops(monkeypatch, kind):
    """Two layers, one step of a batch-first sequence (not contiguous), states that do not require
    grad: the gradients of the input and of every parameter, and the accumulated .grad."""
    torch.manual_seed(3)
    module = MODULES[kind](6, 9, num_layers=2, batch_first=True, backend="native")
    x = torch.randn(4, 3, 6, requires_grad=True)[:, 1:2]
    state = torch.randn(2, 4, 9)
    state = (state, torch.randn(2, 4, 9)) if kind == "lstm" else state
    parameters = list(module.parameters())

    def gradients():
        module.zero_grad()
        loss = sum((t * t.sin()).sum() for t in _tensors(module(x, state)))
        (dx,) = torch.autograd.grad(loss, [x], retain_graph=True)
        loss.backward()
        return [dx, *(p.grad.clone() for p in parameters)]

    ran = _native_steps(monkeypatch)
    direct = gradients()
    assert ran == [True, True]
    with torch.profiler.profile(**PROFILE):
        through_the_ops = gradients()
    assert ran == [True, True, False, False]
    _assert_identical(direct, through_the_ops)
    assert all(g.abs().sum() > 0 for g in direct)
