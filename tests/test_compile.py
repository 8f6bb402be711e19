"""torch.compile(module, fullgraph=True): no graph break, and the same results as eager.

fullgraph=True turns any graph break into an error, so running is the check; outputs, final states
and every gradient (input, initial states, parameters) must then match eager within float32 parity.
Graph breaks are Dynamo's business, whichever compiler runs the graph, so most cases compile with
"aot_eager" (Dynamo + AOTAutograd, no code generation); one runs the default Inductor end to end.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import backends, reference
from fused_rnn.parity import relative_error

FLOAT32_TOLERANCE = 1e-5


def flatten(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in flatten(item)]


def outputs_and_grads(model, inputs: list[torch.Tensor], call) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    outputs = flatten(call(model, *leaves))
    generator = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, leaves + list(model.parameters()))
    return [o.detach() for o in outputs] + list(grads)


def sequence_model_call(model, x, *states):
    if not states:
        return model(x)
    return model(x, tuple(states) if len(states) == 2 else states[0])


CASES = {
    "lstm-bidirectional-2-layers-proj-hx": (
        lambda: fused_rnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2),
        lambda T, B: [torch.randn(T, B, 3), torch.randn(4, B, 2), torch.randn(4, B, 5)],
        sequence_model_call,
    ),
    "gru-batch-first": (
        lambda: fused_rnn.GRU(3, 5, batch_first=True),
        lambda T, B: [torch.randn(B, T, 3)],
        sequence_model_call,
    ),
    "rnn-relu-2-layers-unbatched": (
        lambda: fused_rnn.RNN(3, 5, num_layers=2, nonlinearity="relu"),
        lambda T, B: [torch.randn(T, 3), torch.randn(2, 5)],
        sequence_model_call,
    ),
    "lstm-cell": (
        lambda: fused_rnn.LSTMCell(3, 5),
        lambda T, B: [torch.randn(B, 3), torch.randn(B, 5), torch.randn(B, 5)],
        lambda model, x, h, c: model(x, (h, c)),
    ),
}


def check_against_eager(name: str, compiler_backend: str, shapes) -> None:
    make_model, make_inputs, call = CASES[name]
    torch.manual_seed(100 + list(CASES).index(name))
    model = make_model()
    compiled = torch.compile(model, fullgraph=True, backend=compiler_backend)
    for steps, batch in shapes:
        inputs = make_inputs(steps, batch)
        eager = outputs_and_grads(model, inputs, call)
        traced = outputs_and_grads(compiled, inputs, call)
        assert len(traced) == len(eager)
        for got, want in zip(traced, eager):
            assert got.shape == want.shape
            assert relative_error(got, want) <= FLOAT32_TOLERANCE


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_module_matches_eager(name):
    """Dynamo and AOTAutograd (fake functions, autograd of the ops) over every kind of module, with
    a second and third shape recompiling with symbolic sizes."""
    check_against_eager(name, "aot_eager", [(7, 3), (4, 5), (9, 2)])


@pytest.mark.parametrize("name", ["lstm-bidirectional-2-layers-proj-hx", "gru-batch-first"])
def test_compiled_inference_matches_eager(name):
    """Under torch.no_grad the modules run the inference ops, which must trace as well."""
    make_model, make_inputs, call = CASES[name]
    torch.manual_seed(200 + list(CASES).index(name))
    model = make_model()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    inputs = make_inputs(6, 3)
    with torch.no_grad():
        eager, traced = flatten(call(model, *inputs)), flatten(call(compiled, *inputs))
    assert len(traced) == len(eager)
    for got, want in zip(traced, eager):
        assert got.shape == want.shape and relative_error(got, want) <= FLOAT32_TOLERANCE


def test_inductor_compiled_module_matches_eager():
    """The default compiler end to end. One cell only: Inductor compiles C++ for each kernel, and
    a cold cache costs over a minute for the 2-layer bidirectional LSTM on a 2-core machine."""
    check_against_eager("lstm-cell", "inductor", [(1, 3)])


PACKED_CASES = {
    "lstm-2-layers-bidirectional-proj-unsorted-hx": (
        lambda: fused_rnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2), False, True),
    "gru-sorted": (lambda: fused_rnn.GRU(3, 5), True, False),
    "rnn-relu-unsorted-hx": (lambda: fused_rnn.RNN(3, 4, nonlinearity="relu"), False, True),
}


def packed_call(model, x, lengths, *states, enforce_sorted=True):
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    output, finals = sequence_model_call(model, packed, *states)
    return output.data, finals


def packed_inputs(model, steps, batch, with_states, sorted_lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    if sorted_lengths:
        lengths = lengths.sort(descending=True).values
    x = torch.randn(steps, batch, 3, generator=generator)
    if not with_states:
        return x, lengths, []
    slots = model.num_layers * (2 if model.bidirectional else 1)
    states = [torch.randn(slots, batch, model.proj_size or model.hidden_size, generator=generator)]
    if isinstance(model, fused_rnn.LSTM):
        states.append(torch.randn(slots, batch, model.hidden_size, generator=generator))
    return x, lengths, states


@pytest.mark.parametrize("name", list(PACKED_CASES))
def test_compiled_module_with_packed_input_matches_eager(name):
    """PackedSequence input traces with fullgraph=True: the lengths stay tensors (no Python branch
    on their values), and batch_sizes[0] is a size the graph takes as it comes."""
    make_model, sorted_lengths, with_states = PACKED_CASES[name]
    torch.manual_seed(300 + list(PACKED_CASES).index(name))
    model = make_model()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for seed, (steps, batch) in enumerate([(6, 4), (6, 3), (4, 5)]):
        x, lengths, states = packed_inputs(model, steps, batch, with_states, sorted_lengths, seed)

        def call(m, x, *states):
            return packed_call(m, x, lengths, *states, enforce_sorted=sorted_lengths)

        eager = outputs_and_grads(model, [x, *states], call)
        traced = outputs_and_grads(compiled, [x, *states], call)
        assert len(traced) == len(eager)
        for got, want in zip(traced, eager):
            assert got.shape == want.shape and relative_error(got, want) <= FLOAT32_TOLERANCE


@pytest.mark.parametrize("sorted_lengths, with_states", [(False, True), (False, False), (True, True)])
def test_packed_input_compiles_without_a_graph_break(sorted_lengths, with_states):
    """Without fullgraph: one graph wherever the batch size is a shape (the packing's sorted_indices
    or the initial state); a sorted packing without a state has it only in batch_sizes' values."""
    model = fused_rnn.GRU(3, 5, num_layers=2, bidirectional=True)
    x, lengths, states = packed_inputs(model, 5, 3, with_states, sorted_lengths, 0)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=sorted_lengths)
    explanation = torch._dynamo.explain(model)(packed, *states)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_module_follows_backend_changes(monkeypatch):
    """The backend is resolved outside the graph, as a constant: changing m.backend recompiles."""

    def doubled_rnn_forward(*args):
        hs, h_n = reference.rnn_forward(*args)
        return 2 * hs, 2 * h_n

    doubling = types.SimpleNamespace(
        unavailable_reason=lambda device: None,
        **{name: getattr(reference, name) for name in ("rnn_backward", "lstm_forward", "lstm_backward",
                                                        "gru_forward", "gru_backward")},
        rnn_forward=doubled_rnn_forward,
    )
    monkeypatch.setitem(backends.BACKEND_MODULES, "doubling", "tests.doubling")
    monkeypatch.setitem(backends._modules, "doubling", doubling)
    model = fused_rnn.RNN(3, 4, backend="reference")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        plain = compiled(x)[0]
        model.backend = "doubling"
        assert torch.allclose(compiled(x)[0], 2 * plain)
        model.backend = "reference"
        assert torch.equal(compiled(x)[0], plain)


def test_importing_fused_rnn_does_not_import_dynamo():
    """Marking the backend resolution for Dynamo must not cost every user Dynamo's import time."""
    check = "import sys, fused_rnn; assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'"
    subprocess.run([sys.executable, "-c", check], check=True)
