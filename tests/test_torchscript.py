"""TorchScript: torch.jit.script and torch.jit.trace of every module, padded and packed, as torch.nn
supports them (a module holding the layer, scripted or traced; a packed input is built inside or
handed in), with the outputs and every gradient equal to eager, and a scripted module that saves
and loads. The ops are torch.ops.fused_rnn.*, so the scripted code calls them directly."""

import io
import warnings
from typing import Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn.parity import relative_error

TOLERANCE = 1e-12  # float64: the same ops in the same order


class Padded(nn.Module):
    """x [T, B, I] ([B, T, I] batch_first, or unbatched) and initial states -> output and finals."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, h0: Tensor) -> Tuple[Tensor, Tensor]:
        output, h_n = self.rnn(x, h0)
        return output, h_n


class PaddedLSTM(Padded):
    def forward(self, x: Tensor, h0: Tensor, c0: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if c0 is None:
            output, (h_n, c_n) = self.rnn(x)
        else:
            output, (h_n, c_n) = self.rnn(x, (h0, c0))
        return output, h_n + c_n.sum()


class PackedInside(Padded):
    """Packs x [T, B, I] by lengths (unsorted) and runs the layer -> packed output data, finals."""

    def forward(self, x: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        output, h_n = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return output.data, h_n


class PackedInsideLSTM(Padded):
    def forward(self, x: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        output, (h_n, c_n) = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return output.data, h_n + c_n.sum()


class PackedArgument(Padded):
    """A PackedSequence handed in (scripting only: torch.jit.trace takes no PackedSequence)."""

    def forward(self, packed: PackedSequence, h0: Tensor) -> Tuple[Tensor, Tensor]:
        output, h_n = self.rnn(packed, h0)
        return output.data, h_n


class PackedArgumentLSTM(Padded):
    def forward(self, packed: PackedSequence, h0: Tensor) -> Tuple[Tensor, Tensor]:
        c0 = h0.new_zeros(h0.size(0), h0.size(1), self.rnn.hidden_size)
        output, (h_n, c_n) = self.rnn(packed, (h0, c0))
        return output.data, h_n + c_n.sum()


LAYERS = {
    "lstm-2-layers-bidirectional": lambda: fused_rnn.LSTM(3, 5, num_layers=2, bidirectional=True),
    "lstm-proj": lambda: fused_rnn.LSTM(3, 5, proj_size=2),
    "gru-batch-first": lambda: fused_rnn.GRU(3, 5, batch_first=True),
    "gru-bidirectional": lambda: fused_rnn.GRU(3, 4, bidirectional=True),
    "rnn-relu-2-layers": lambda: fused_rnn.RNN(3, 5, num_layers=2, nonlinearity="relu"),
    "rnn-tanh-no-bias": lambda: fused_rnn.RNN(3, 4, bias=False),
}


def wrap(name: str, kind: str) -> nn.Module:
    torch.manual_seed(len(name))
    layer = LAYERS[name]().double()
    lstm = isinstance(layer, fused_rnn.LSTM)
    wrapper = {
        "padded": PaddedLSTM if lstm else Padded,
        "packed-inside": PackedInsideLSTM if lstm else PackedInside,
        "packed-argument": PackedArgumentLSTM if lstm else PackedArgument,
    }[kind]
    return wrapper(layer)


def inputs(model: nn.Module, kind: str, batch: int = 4, steps: int = 6, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    layer = model.rnn
    x = torch.randn(steps, batch, layer.input_size, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps
    slots = layer.num_layers * (2 if layer.bidirectional else 1)
    state = layer.proj_size if getattr(layer, "proj_size", 0) else layer.hidden_size
    h0 = torch.randn(slots, batch, state, generator=generator, dtype=torch.float64)
    if kind == "packed-inside":
        return x, lengths
    if kind == "packed-argument":
        return pack_padded_sequence(x, lengths, enforce_sorted=False), h0
    if layer.batch_first:
        x = x.transpose(0, 1).contiguous()
    if isinstance(layer, fused_rnn.LSTM):
        c0 = torch.randn(slots, batch, layer.hidden_size, generator=generator, dtype=torch.float64)
        return x, h0, c0
    return x, h0


def leaves(args: tuple) -> tuple:
    """The float arguments as fresh leaves that require grad (a PackedSequence's data included)."""
    out = []
    for a in args:
        if isinstance(a, PackedSequence):
            out.append(PackedSequence(a.data.detach().requires_grad_(), a.batch_sizes, a.sorted_indices, a.unsorted_indices))
        elif a.is_floating_point():
            out.append(a.detach().requires_grad_())
        else:
            out.append(a)
    return tuple(out)


def outputs_and_grads(model: nn.Module, args: tuple) -> list[Tensor]:
    args = leaves(args)
    outputs = model(*args)
    wrt = [a.data if isinstance(a, PackedSequence) else a for a in args if isinstance(a, PackedSequence) or a.requires_grad]
    wrt += list(model.parameters())
    generator = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=generator, dtype=o.dtype)).sum() for o in outputs)
    return [o.detach() for o in outputs] + list(torch.autograd.grad(loss, wrt))


def assert_same(got: list[Tensor], want: list[Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and relative_error(g, w) <= TOLERANCE


def saved_and_loaded(scripted) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


@pytest.mark.parametrize("kind", ["padded", "packed-inside", "packed-argument"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_scripted_module_matches_eager(name, kind):
    model = wrap(name, kind)
    scripted = torch.jit.script(model)
    for seed, batch in ((0, 4), (1, 3)):  # a second batch size and lengths through the same script
        args = inputs(model, kind, batch=batch, seed=seed)
        eager = outputs_and_grads(model, args)
        assert_same(outputs_and_grads(scripted, args), eager)
    assert_same(outputs_and_grads(saved_and_loaded(scripted), args), eager)


@pytest.mark.parametrize("kind", ["padded", "packed-inside"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_traced_module_matches_eager(name, kind):
    model = wrap(name, kind)
    args = inputs(model, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on pack_padded_sequence's Python ints
        traced = torch.jit.trace(model, args)  # checks that a second trace records the same graph
    assert_same(outputs_and_grads(traced, args), outputs_and_grads(model, args))
    other = inputs(model, kind, seed=5)  # the same sizes, other values and lengths
    assert_same(outputs_and_grads(traced, other), outputs_and_grads(model, other))
    with torch.no_grad():  # the trace holds one path for every grad mode
        assert_same(list(traced(*other)), list(model(*other)))


def test_a_layer_scripts_directly_as_torch_nn_does():
    """torch.jit.script of the layer itself compiles both forward overloads (padded and packed);
    a module that calls it picks one, as with torch.nn.LSTM."""
    for layer in (fused_rnn.LSTM(3, 5), fused_rnn.GRU(3, 5), fused_rnn.RNN(3, 5)):
        assert isinstance(torch.jit.script(layer), torch.jit.ScriptModule)


def test_scripted_code_calls_the_fused_ops():
    graph = str(torch.jit.script(wrap("lstm-proj", "padded")).inlined_graph)
    assert "fused_rnn::lstm_forward" in graph and "fused_rnn::lstm_inference" in graph  # by grad mode


CELLS = {
    "lstm-cell": lambda: fused_rnn.LSTMCell(3, 5),
    "gru-cell": lambda: fused_rnn.GRUCell(3, 5),
    "rnn-cell-relu-no-bias": lambda: fused_rnn.RNNCell(3, 5, bias=False, nonlinearity="relu"),
}


class CellStep(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return self.cell(x, h)


class LSTMCellStep(CellStep):
    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        h_new, c_new = self.cell(x, (h, torch.tanh(h)))
        return h_new + c_new


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("name", list(CELLS))
def test_scripted_and_traced_cells_match_eager(name, batched):
    torch.manual_seed(3)
    cell = CELLS[name]().double()
    model = LSTMCellStep(cell) if isinstance(cell, fused_rnn.LSTMCell) else CellStep(cell)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    h = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    args = (x, h) if batched else (x[0], h[0])
    eager = outputs_and_grads(model, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the shape checks (torch.nn's are in C++)
        traced = torch.jit.trace(model, args)
    for compiled in (torch.jit.script(model), traced):
        assert_same(outputs_and_grads(compiled, args), eager)
    # The cell alone, without a state: zeros, as in eager. TorchScript projects with F.linear and
    # eager with the backend's GEMM, whose float64 sums round differently.
    scripted_cell = torch.jit.script(cell)
    zeros = torch.zeros(2, 5, dtype=torch.float64)
    state = (zeros, zeros) if isinstance(cell, fused_rnn.LSTMCell) else zeros
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    for run in (scripted_cell, cell):
        assert torch.equal(first(run(x)), first(run(x, state)))
    assert_same([first(scripted_cell(x))], [first(cell(x))])


def test_scripted_module_raises_torch_nn_errors():
    scripted = torch.jit.script(Padded(fused_rnn.GRU(3, 5).double()))
    with pytest.raises(torch.jit.Error, match=r"Expected hidden size \(1, 2, 5\), got \[1, 3, 5\]"):
        scripted(torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(1, 3, 5, dtype=torch.float64))
