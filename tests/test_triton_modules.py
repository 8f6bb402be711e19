"""End-to-end gradients of the drop-in modules with backend="triton" (float32) against torch.nn in
float64 with the same weights: outputs, final states, and the gradients of the input, the initial
states and every parameter, through layers, directions, packed sequences and LSTM projections."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn.backends import unavailable_reason
from fused_rnn.parity import module_outputs_and_grads, relative_error

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REASON = unavailable_reason("triton", DEVICE)
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton backend unavailable: {REASON}")

STEPS, BATCH, INPUT = 6, 5, 3
LENGTHS = torch.tensor([6, 2, 5, 1, 4])

# (fused_rnn class, torch.nn class, constructor keywords, packed input)
MODULES = {
    "lstm-2layers-bidirectional-packed": (fused_rnn.LSTM, nn.LSTM, {"hidden_size": 20, "num_layers": 2, "bidirectional": True}, True),
    "lstm-proj-bidirectional-packed": (fused_rnn.LSTM, nn.LSTM, {"hidden_size": 33, "proj_size": 7, "bidirectional": True}, True),
    "gru-2layers-bidirectional-packed": (fused_rnn.GRU, nn.GRU, {"hidden_size": 33, "num_layers": 2, "bidirectional": True}, True),
    "rnn-relu-2layers-batch-first": (fused_rnn.RNN, nn.RNN, {"hidden_size": 9, "num_layers": 2, "nonlinearity": "relu", "batch_first": True}, False),
    "rnn-tanh-bidirectional-no-bias": (fused_rnn.RNN, nn.RNN, {"hidden_size": 9, "bias": False, "bidirectional": True}, False),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_module_gradients_match_torch_nn_in_float64(name):
    ours_class, torch_class, keywords, packed = MODULES[name]
    torch.manual_seed(0)
    ours = ours_class(INPUT, backend="triton", **keywords).to(DEVICE)
    exact = torch_class(INPUT, **keywords).double()
    exact.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    layers = keywords.get("num_layers", 1) * (2 if keywords.get("bidirectional") else 1)
    state = keywords.get("proj_size") or keywords["hidden_size"]
    x_shape = (BATCH, STEPS, INPUT) if keywords.get("batch_first") else (STEPS, BATCH, INPUT)
    x = torch.randn(x_shape)
    states = [torch.randn(layers, BATCH, state)]
    if ours_class is fused_rnn.LSTM:
        states.append(torch.randn(layers, BATCH, keywords["hidden_size"]))

    directions = 2 if keywords.get("bidirectional") else 1
    output_shape = (*x_shape[:2], directions * state)
    weights = [torch.randn(shape, dtype=torch.float64) for shape in [output_shape] + [s.shape for s in states]]
    exact_outputs, exact_grads = module_outputs_and_grads(
        exact, x.double(), [s.double() for s in states], LENGTHS if packed else None, weights
    )
    our_outputs, our_grads = module_outputs_and_grads(
        ours, x.to(DEVICE), [s.to(DEVICE) for s in states], LENGTHS if packed else None, weights
    )

    names = ["output"] + [f"final state {i}" for i in range(len(states))]
    names += ["d_input"] + [f"d_state {i}" for i in range(len(states))] + [f"d_{n}" for n, _ in ours.named_parameters()]
    for label, value, expected in zip(names, our_outputs + list(our_grads), exact_outputs + list(exact_grads)):
        assert value.dtype == torch.float32
        error = relative_error(value, expected)
        assert error <= 1e-5, f"{name}: {label} relative error {error:.3g}"
