"""End-to-end parity of the drop-in modules with backend="native" against torch.nn with the same
weights: outputs, final states, and the gradients of the input, the initial states and every
parameter, through layers, directions, packed sequences, batch_first and LSTM projections.
In float64 the native kernels and torch.nn compute the same sums: they agree to 1e-10; float32
and bfloat16 runs are compared with torch.nn in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn import native
from fused_rnn.parity import module_outputs_and_grads, relative_error

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

STEPS, BATCH, INPUT = 6, 5, 3
LENGTHS = torch.tensor([6, 2, 5, 1, 4])

# (fused_rnn class, torch.nn class, constructor keywords, packed input)
MODULES = {
    "lstm-2layers-bidirectional-packed": (fused_rnn.LSTM, nn.LSTM, {"hidden_size": 20, "num_layers": 2, "bidirectional": True}, True),
    "lstm-proj-bidirectional-packed": (fused_rnn.LSTM, nn.LSTM, {"hidden_size": 33, "proj_size": 7, "bidirectional": True}, True),
    "lstm-proj-2layers-batch-first": (fused_rnn.LSTM, nn.LSTM, {"hidden_size": 9, "proj_size": 4, "num_layers": 2, "batch_first": True}, False),
    "gru-2layers-bidirectional-packed": (fused_rnn.GRU, nn.GRU, {"hidden_size": 33, "num_layers": 2, "bidirectional": True}, True),
    "gru-no-bias-batch-first": (fused_rnn.GRU, nn.GRU, {"hidden_size": 17, "bias": False, "batch_first": True}, False),
    "rnn-relu-2layers-batch-first": (fused_rnn.RNN, nn.RNN, {"hidden_size": 9, "num_layers": 2, "nonlinearity": "relu", "batch_first": True}, False),
    "rnn-tanh-bidirectional-packed": (fused_rnn.RNN, nn.RNN, {"hidden_size": 9, "bidirectional": True}, True),
}


def _compare(name: str, dtype: torch.dtype, limit: float) -> None:
    ours_class, torch_class, keywords, packed = MODULES[name]
    torch.manual_seed(0)
    ours = ours_class(INPUT, backend="native", **keywords).to(dtype)
    exact = torch_class(INPUT, **keywords).double()
    exact.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    layers = keywords.get("num_layers", 1) * (2 if keywords.get("bidirectional") else 1)
    state = keywords.get("proj_size") or keywords["hidden_size"]
    x_shape = (BATCH, STEPS, INPUT) if keywords.get("batch_first") else (STEPS, BATCH, INPUT)
    x = torch.randn(x_shape, dtype=dtype)
    states = [torch.randn(layers, BATCH, state, dtype=dtype)]
    if ours_class is fused_rnn.LSTM:
        states.append(torch.randn(layers, BATCH, keywords["hidden_size"], dtype=dtype))

    directions = 2 if keywords.get("bidirectional") else 1
    output_shape = (*x_shape[:2], directions * state)
    weights = [torch.randn(shape, dtype=torch.float64) for shape in [output_shape] + [s.shape for s in states]]
    exact_outputs, exact_grads = module_outputs_and_grads(
        exact, x.double(), [s.double() for s in states], LENGTHS if packed else None, weights
    )
    our_outputs, our_grads = module_outputs_and_grads(
        ours, x, states, LENGTHS if packed else None, weights
    )

    names = ["output"] + [f"final state {i}" for i in range(len(states))]
    names += ["d_input"] + [f"d_state {i}" for i in range(len(states))] + [f"d_{n}" for n, _ in ours.named_parameters()]
    assert len(our_outputs) + len(our_grads) == len(names)
    for label, value, expected in zip(names, our_outputs + list(our_grads), exact_outputs + list(exact_grads)):
        assert value.dtype == dtype
        error = relative_error(value, expected)
        assert error <= limit, f"{name} {dtype}: {label} relative error {error:.3g} > {limit:.3g}"


@pytest.mark.parametrize("name", list(MODULES))
def test_module_matches_torch_nn_in_float64(name):
    _compare(name, torch.float64, 1e-10)


@pytest.mark.parametrize("name", ["lstm-proj-bidirectional-packed", "gru-2layers-bidirectional-packed"])
def test_module_matches_torch_nn_in_float32(name):
    _compare(name, torch.float32, 1e-5)


def test_bfloat16_lstm_is_as_close_to_float64_as_torch_nn_in_bfloat16():
    """bfloat16: within 2x the error of torch.nn computing in bfloat16 (DESIGN.md, numerics)."""
    torch.manual_seed(0)
    ours = fused_rnn.LSTM(INPUT, 24, backend="native").bfloat16()
    low = nn.LSTM(INPUT, 24).bfloat16()
    low.load_state_dict(ours.state_dict())
    exact = nn.LSTM(INPUT, 24).double()
    exact.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    x = torch.randn(STEPS, BATCH, INPUT).bfloat16()
    states = [torch.randn(1, BATCH, 24).bfloat16() for _ in range(2)]
    weights = [torch.randn(shape, dtype=torch.float64) for shape in [(STEPS, BATCH, 24), (1, BATCH, 24), (1, BATCH, 24)]]
    exact_values = [v for part in module_outputs_and_grads(exact, x.double(), [s.double() for s in states], None, weights) for v in part]

    def errors(module) -> list[float]:
        values = [v for part in module_outputs_and_grads(module, x, states, None, weights) for v in part]
        return [relative_error(v, e) for v, e in zip(values, exact_values)]

    for index, (mine, theirs) in enumerate(zip(errors(ours), errors(low))):
        assert mine <= 2 * theirs, f"value {index}: native error {mine:.3g} > 2 x torch.nn's {theirs:.3g}"
