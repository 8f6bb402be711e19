"""The drop-in modules against torch.nn: outputs, final states and every gradient, over a grid.

The grid (cell x layers x bidirectional x batch_first x bias x proj_size x padded/packed/unbatched x
dtype x initial state given) is covered by a deterministic 4-wise covering design: every
combination of values of any four axes appears in at least one case. float64 must equal torch.nn
in float64 to 1e-10; float32 must be within 1e-5 of torch.nn in float64 (relative error, DESIGN.md).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn.parity import relative_error

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
INPUT_SIZE, HIDDEN_SIZE, PROJ_SIZE, STEPS, BATCH = 3, 5, 3, 7, 5
OURS = {"LSTM": fused_rnn.LSTM, "GRU": fused_rnn.GRU, "RNN_TANH": fused_rnn.RNN, "RNN_RELU": fused_rnn.RNN}
THEIRS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}


# ---------------------------------------------------------------------------------------------
# The covering design
# ---------------------------------------------------------------------------------------------


def covering_design(axes: dict[str, list], valid, strength: int) -> list[dict]:
    """A deterministic greedy covering array: a list of full assignments (axis -> value), each
    `valid`, such that every valid combination of values of any `strength` axes appears in one.

    Each new case starts from the first combination not yet covered and fills the other axes in
    order, each with the value that covers the most uncovered combinations (ties: the first).
    """
    names = list(axes)

    def combos(assignment: dict) -> list[tuple]:
        present = [n for n in names if n in assignment]
        return [tuple((n, assignment[n]) for n in subset) for subset in itertools.combinations(present, strength)]

    uncovered = {
        tuple(zip(subset, values))
        for subset in itertools.combinations(names, strength)
        for values in itertools.product(*(axes[n] for n in subset))
        if valid(dict(zip(subset, values)))
    }
    order = {(n, v): (names.index(n), axes[n].index(v)) for n in names for v in axes[n]}
    cases = []
    while uncovered:
        fixed = dict(min(uncovered, key=lambda combo: [order[pair] for pair in combo]))
        for name in names:
            if name not in fixed:

                def gain(value, name=name) -> tuple[int, int]:
                    newly_covered = sum(c in uncovered for c in combos({**fixed, name: value}))
                    return newly_covered, -axes[name].index(value)

                fixed[name] = max((v for v in axes[name] if valid({**fixed, name: v})), key=gain)
        case = {n: fixed[n] for n in names}
        uncovered.difference_update(combos(case))
        cases.append(case)
    return cases


@dataclass(frozen=True)
class GridCase:
    cell: str = "LSTM"
    num_layers: int = 1
    layout: str = "padded"  # "padded", "packed" (unsorted lengths incl. 1 and T) or "unbatched"
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj: bool = False
    dtype: str = "float64"
    hx: bool = False
    steps: int = STEPS
    batch: int = BATCH

    def __str__(self) -> str:
        flags = [
            self.cell, f"L{self.num_layers}", self.layout, self.dtype, f"T{self.steps}", f"B{self.batch}",
            "bidir" if self.bidirectional else "", "batch_first" if self.batch_first else "",
            "" if self.bias else "nobias", "proj" if self.proj else "", "hx" if self.hx else "",
        ]
        return "-".join(f for f in flags if f)


AXES = {
    "cell": ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"],
    "num_layers": [1, 2, 3],
    "layout": ["padded", "packed", "unbatched"],
    "bidirectional": [False, True],
    "batch_first": [False, True],
    "bias": [True, False],
    "proj": [False, True],
    "dtype": ["float64", "float32"],
    "hx": [False, True],
}


def valid_case(assignment: dict) -> bool:
    return not (assignment.get("proj") and assignment.get("cell", "LSTM") != "LSTM")


GRID = [GridCase(**case) for case in covering_design(AXES, valid_case, strength=4)]

FULL_FEATURE = [
    GridCase("LSTM", 3, "packed", True, True, True, True, "float32", True),
    GridCase("LSTM", 3, "packed", True, True, True, True, "float64", True),
    GridCase("GRU", 3, "packed", True, False, True, False, "float32", True),
    GridCase("RNN_RELU", 2, "unbatched", True, True, False, False, "float32", True),
    GridCase("LSTM", 2, "padded", True, False, True, True, "float64", True, steps=1),
    GridCase("GRU", 1, "packed", False, False, True, False, "float64", True, steps=1, batch=1),
    GridCase("RNN_TANH", 2, "packed", True, False, True, False, "float64", False, batch=1),
]


def test_covering_design_covers_every_four_axes():
    seen = {tuple((n, getattr(c, n)) for n in subset) for c in GRID for subset in itertools.combinations(AXES, 4)}
    for subset in itertools.combinations(AXES, 4):
        for values in itertools.product(*(AXES[n] for n in subset)):
            if valid_case(dict(zip(subset, values))):
                assert tuple(zip(subset, values)) in seen
    assert all(valid_case(vars(c)) for c in GRID)
    assert 100 <= len(GRID) <= 150


# ---------------------------------------------------------------------------------------------
# Running one case on both implementations
# ---------------------------------------------------------------------------------------------


def constructor_kwargs(case: GridCase) -> dict:
    kwargs = dict(
        input_size=INPUT_SIZE, hidden_size=HIDDEN_SIZE, num_layers=case.num_layers, bias=case.bias,
        batch_first=case.batch_first, bidirectional=case.bidirectional,
    )
    if case.proj:
        kwargs["proj_size"] = PROJ_SIZE
    if case.cell.startswith("RNN"):
        kwargs["nonlinearity"] = "relu" if case.cell == "RNN_RELU" else "tanh"
    return kwargs


def draw_data(case: GridCase, seed: int) -> dict:
    """float64 input [T, B, I] (time-major), unsorted lengths with 1 and T, initial states."""
    generator = torch.Generator().manual_seed(seed)
    slots = case.num_layers * (2 if case.bidirectional else 1)
    state = PROJ_SIZE if case.proj else HIDDEN_SIZE
    data = {"x": torch.randn(case.steps, case.batch, INPUT_SIZE, generator=generator, dtype=torch.float64)}
    lengths = torch.randint(1, case.steps + 1, (case.batch,), generator=generator)
    lengths[torch.randperm(case.batch, generator=generator)[:2]] = torch.tensor([1, case.steps])[: case.batch]
    data["lengths"] = lengths
    if case.hx:
        data["h0"] = torch.randn(slots, case.batch, state, generator=generator, dtype=torch.float64) * 0.5
        if case.cell == "LSTM":
            data["c0"] = torch.randn(slots, case.batch, HIDDEN_SIZE, generator=generator, dtype=torch.float64) * 0.5
    return data


def run_module(model: nn.Module, case: GridCase, data: dict, dtype: torch.dtype, seed: int) -> dict:
    """Forward and backward of `model` on `data` cast to dtype -> outputs and gradients by name."""
    x = data["x"].to(dtype)
    if case.batch_first:
        x = x.transpose(0, 1).contiguous()
    if case.layout == "unbatched":
        x = x[:, 0] if not case.batch_first else x[0]
    x.requires_grad_()
    states = {n: data[n].to(dtype).requires_grad_() for n in ("h0", "c0") if n in data}
    if case.layout == "unbatched":
        states = {n: s[:, 0].detach().requires_grad_() for n, s in states.items()}
    hx = None
    if states:
        hx = (states["h0"], states["c0"]) if case.cell == "LSTM" else states["h0"]
    if case.layout == "packed":
        packed = pack_padded_sequence(x, data["lengths"], batch_first=case.batch_first, enforce_sorted=False)
        output, finals = model(packed, hx)
        assert isinstance(output, PackedSequence)
        result = {
            "batch_sizes": output.batch_sizes,
            "sorted_indices": output.sorted_indices,
            "unsorted_indices": output.unsorted_indices,
        }
        output = output.data
    else:
        output, finals = model(x, hx)
        result = {}
    finals = finals if isinstance(finals, tuple) else (finals,)
    outputs = {"output": output, **{f"final{i}": f for i, f in enumerate(finals)}}
    generator = torch.Generator().manual_seed(seed + 1)
    loss = sum(
        (value * torch.randn(value.shape, generator=generator, dtype=torch.float64).to(dtype)).sum()
        for value in outputs.values()
    )
    leaves = {"x": x, **states, **dict(model.named_parameters())}
    grads = torch.autograd.grad(loss, list(leaves.values()))
    result.update({name: value.detach() for name, value in outputs.items()})
    result.update({f"d_{name}": grad for name, grad in zip(leaves, grads)})
    return result


def make_pair(case: GridCase, dtype: torch.dtype, seed: int):
    """(torch.nn model in float64, our model in dtype with the same weights)."""
    torch.manual_seed(seed)
    theirs = THEIRS[case.cell](**constructor_kwargs(case), dtype=torch.float64)
    ours = OURS[case.cell](**constructor_kwargs(case), dtype=dtype, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def check_case(case: GridCase, seed: int) -> None:
    dtype = getattr(torch, case.dtype)
    theirs, ours = make_pair(case, dtype, seed)
    data = draw_data(case, seed)
    expected = run_module(theirs, case, data, torch.float64, seed)
    actual = run_module(ours, case, data, dtype, seed)
    assert sorted(actual) == sorted(expected)
    for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        if name in expected:
            assert torch.equal(actual.pop(name), expected.pop(name)), name
    for name, want in expected.items():
        assert actual[name].dtype == dtype, name
        error = relative_error(actual[name], want)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.3g} against torch.nn float64"


@pytest.mark.parametrize("case", GRID, ids=str)
def test_matches_torch_nn_over_the_grid(case):
    check_case(case, seed=10_000 + GRID.index(case))


@pytest.mark.parametrize("case", FULL_FEATURE, ids=str)
def test_matches_torch_nn_with_every_feature(case):
    check_case(case, seed=20_000 + FULL_FEATURE.index(case))


def test_packed_sorted_input_and_full_length_rows():
    """enforce_sorted=True packs (no indices) and batches whose rows all run T steps."""
    torch.manual_seed(5)
    theirs = nn.GRU(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = fused_rnn.GRU(3, 5, num_layers=2, bidirectional=True, dtype=torch.float64, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    for lengths in ([6, 5, 3, 1], [6, 6, 6, 6]):
        packed = pack_padded_sequence(x, lengths)
        (out_theirs, h_theirs), (out_ours, h_ours) = theirs(packed), ours(packed)
        assert out_ours.sorted_indices is None
        assert torch.equal(out_ours.batch_sizes, out_theirs.batch_sizes)
        assert relative_error(out_ours.data, out_theirs.data) <= 1e-10
        assert relative_error(h_ours, h_theirs) <= 1e-10


# ---------------------------------------------------------------------------------------------
# Parameters, state dicts, initialisation, repr
# ---------------------------------------------------------------------------------------------

CONFIGS = [
    ("LSTM", dict(input_size=3, hidden_size=5)),
    ("LSTM", dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2, batch_first=True)),
    ("LSTM", dict(input_size=4, hidden_size=7, num_layers=3, bias=False, dropout=0.25, proj_size=3)),
    ("GRU", dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, dropout=0.5)),
    ("GRU", dict(input_size=6, hidden_size=1, bias=False, batch_first=True)),
    ("RNN", dict(input_size=3, hidden_size=5, num_layers=3, nonlinearity="relu", bidirectional=True)),
    ("RNN", dict(input_size=2, hidden_size=3, nonlinearity="tanh", bias=False)),
    ("LSTMCell", dict(input_size=3, hidden_size=5)),
    ("GRUCell", dict(input_size=3, hidden_size=5, bias=False)),
    ("RNNCell", dict(input_size=3, hidden_size=5, nonlinearity="relu")),
    ("RNNCell", dict(input_size=3, hidden_size=5, bias=False)),
]
CONFIG_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


def build(name: str, kwargs: dict, seed: int, **ours_kwargs):
    torch.manual_seed(seed)
    theirs = getattr(nn, name)(**kwargs)
    torch.manual_seed(seed)
    ours = getattr(fused_rnn, name)(**kwargs, **ours_kwargs)
    return theirs, ours


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_same_parameters_initialisation_and_repr(name, kwargs):
    theirs, ours = build(name, kwargs, seed=30 + CONFIGS.index((name, kwargs)))
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p, q), f"{n} is not drawn like torch.nn's"
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == repr(theirs)
    assert ours.backend == "auto"
    for attribute in ("input_size", "hidden_size", "bias", "num_layers", "batch_first", "dropout",
                      "bidirectional", "proj_size", "nonlinearity"):
        if hasattr(theirs, attribute):
            assert getattr(ours, attribute) == getattr(theirs, attribute), attribute


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_repr_names_an_explicit_backend(name, kwargs):
    theirs, ours = build(name, kwargs, seed=0, backend="reference")
    assert ours.extra_repr() == theirs.extra_repr() + ", backend='reference'"


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_loads_both_ways(name, kwargs):
    theirs, ours = build(name, kwargs, seed=50)
    torch.manual_seed(51)
    other_theirs = getattr(nn, name)(**kwargs)
    torch.manual_seed(52)
    other_ours = getattr(fused_rnn, name)(**kwargs)
    other_ours.load_state_dict(theirs.state_dict())
    other_theirs.load_state_dict(other_ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(other_ours.state_dict()[key], value)
        assert torch.equal(other_theirs.state_dict()[key], value)
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_flatten_parameters_is_accepted():
    theirs, ours = build("LSTM", dict(input_size=3, hidden_size=4, num_layers=2), seed=3, backend="reference")
    assert ours.flatten_parameters() is None
    x = torch.randn(5, 2, 3)
    assert relative_error(ours(x)[0], theirs(x)[0]) <= 1e-5


def test_backend_attribute_is_settable():
    model = fused_rnn.GRU(3, 4)
    model.backend = "reference"
    assert model.backend == "reference"
    assert "reference" in fused_rnn.available_backends("cpu")
    assert "reference" in fused_rnn.available_backends(torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------

# Wide enough that no single near-zero pre-activation (cancellation, ill-conditioned in float32
# for torch.nn as much as here) dominates a relative error.
CELL_HIDDEN_SIZE = 33
CELL_CASES = [
    (name, bias, batched, with_hx, nonlinearity)
    for name, nonlinearities in (("LSTMCell", [None]), ("GRUCell", [None]), ("RNNCell", ["tanh", "relu"]))
    for nonlinearity in nonlinearities
    for bias, batched, with_hx in itertools.product([True, False], [True, False], [True, False])
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "name, bias, batched, with_hx, nonlinearity", CELL_CASES,
    ids=[f"{n}-{'bias' if b else 'nobias'}-{'batched' if bt else 'unbatched'}-{'hx' if h else 'nohx'}-{nl}"
         for n, b, bt, h, nl in CELL_CASES],
)
def test_cells_match_torch_nn(name, bias, batched, with_hx, nonlinearity, dtype):
    seed = 60 + CELL_CASES.index((name, bias, batched, with_hx, nonlinearity))
    kwargs = dict(input_size=3, hidden_size=CELL_HIDDEN_SIZE, bias=bias)
    if nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    torch.manual_seed(seed)
    theirs = getattr(nn, name)(**kwargs, dtype=torch.float64)
    ours = getattr(fused_rnn, name)(**kwargs, dtype=dtype, backend="reference")
    ours.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(seed)
    shape = (7, 3) if batched else (3,)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    state_shape = (*shape[:-1], CELL_HIDDEN_SIZE)
    state_count = 2 if name == "LSTMCell" else 1
    states = [torch.randn(state_shape, generator=generator, dtype=torch.float64) for _ in range(state_count)]
    weights = [torch.randn(state_shape, generator=generator, dtype=torch.float64) for _ in range(2)]

    def run(model, dtype):
        inputs = [x.to(dtype).requires_grad_()] + [s.to(dtype).requires_grad_() for s in states]
        hx = None if not with_hx else tuple(inputs[1:]) if name == "LSTMCell" else inputs[1]
        out = model(inputs[0], hx)
        out = out if isinstance(out, tuple) else (out,)
        loss = sum((o * w.to(dtype)).sum() for o, w in zip(out, weights))
        leaves = inputs[: 1 + len(states) * with_hx] + list(model.parameters())
        return [o.detach() for o in out] + list(torch.autograd.grad(loss, leaves))

    for got, want in zip(run(ours, dtype), run(theirs, torch.float64), strict=True):
        assert got.shape == want.shape
        assert relative_error(got, want) <= TOLERANCE[dtype]


# ---------------------------------------------------------------------------------------------
# Training/eval behaviour, dropout, NaN, long sequences
# ---------------------------------------------------------------------------------------------


def loss_and_grads(model, x):
    x = x.clone().requires_grad_()
    output, finals = model(x)
    finals = finals if isinstance(finals, tuple) else (finals,)
    loss = output.pow(2).sum() + sum(f.sin().sum() for f in finals)
    return [output.detach()] + list(torch.autograd.grad(loss, [x, *model.parameters()]))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_eval_mode_backward_equals_torch_nn(name):
    """Backward in eval mode (which cuDNN refuses) equals torch.nn's CPU gradients; dropout is off."""
    theirs, ours = build(name, dict(input_size=3, hidden_size=5, num_layers=2, dropout=0.5, bidirectional=True), 70)
    theirs.double().eval()
    ours.double().eval()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    for got, want in zip(loss_and_grads(ours, x), loss_and_grads(theirs, x), strict=True):
        assert relative_error(got, want) <= 1e-10


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_dropout_between_layers_draws_like_torch_nn(name, bidirectional):
    """In training, dropout between layers draws the same masks as torch.nn under the same seed
    (both call dropout on each layer's output in order), so outputs and gradients are equal."""
    kwargs = dict(input_size=3, hidden_size=5, num_layers=3, dropout=0.4, bidirectional=bidirectional)
    theirs, ours = build(name, kwargs, 80)
    theirs.double()
    ours.double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(81)
    ours_grads = loss_and_grads(ours, x)
    torch.manual_seed(81)
    theirs_grads = loss_and_grads(theirs, x)
    for got, want in zip(ours_grads, theirs_grads, strict=True):
        assert relative_error(got, want) <= 1e-10
    torch.manual_seed(82)
    assert relative_error(loss_and_grads(ours, x)[0], ours_grads[0]) > 1e-3, "dropout must draw new masks"
    ours.eval()
    without_dropout = loss_and_grads(ours, x)[0]
    assert relative_error(without_dropout, ours_grads[0]) > 1e-3, "training must apply dropout"
    assert torch.equal(loss_and_grads(ours, x)[0], without_dropout), "eval must not apply dropout"


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_dropout_on_packed_input_draws_like_torch_nn(name):
    """With packed input torch.nn draws each mask over the packed rows (the live steps of each
    sequence, time-major), not over the padded tensor."""
    kwargs = dict(input_size=3, hidden_size=5, num_layers=3, dropout=0.4, bidirectional=True)
    theirs, ours = build(name, kwargs, 83)
    theirs.double()
    ours.double()
    padded = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([3, 6, 1, 4])

    def loss_and_grads_packed(model):
        x = padded.clone().requires_grad_()
        output, finals = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
        finals = finals if isinstance(finals, tuple) else (finals,)
        loss = output.data.pow(2).sum() + sum(f.sin().sum() for f in finals)
        return [output.data.detach()] + list(torch.autograd.grad(loss, [x, *model.parameters()]))

    torch.manual_seed(84)
    ours_grads = loss_and_grads_packed(ours)
    torch.manual_seed(84)
    theirs_grads = loss_and_grads_packed(theirs)
    for got, want in zip(ours_grads, theirs_grads, strict=True):
        assert relative_error(got, want) <= 1e-10


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_nan_in_the_input_propagates_like_torch_nn(name):
    theirs, ours = build(name, dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True), 90)
    x = torch.randn(6, 3, 3)
    x[2, 1, 0] = math.nan
    (out_theirs, h_theirs), (out_ours, h_ours) = theirs(x), ours(x)
    h_theirs = h_theirs if isinstance(h_theirs, tuple) else (h_theirs,)
    h_ours = h_ours if isinstance(h_ours, tuple) else (h_ours,)
    for got, want in zip((out_ours, *h_ours), (out_theirs, *h_theirs), strict=True):
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.isnan(got).any()
        finite = ~torch.isnan(want)
        assert relative_error(got[finite], want[finite]) <= 1e-5
    assert not torch.isnan(out_ours[:, 0]).any(), "NaN leaked into another batch row"


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_long_sequence_stays_finite(name):
    """T = 4000 steps in float32: outputs and gradients finite and within 1e-5 of torch.nn in float64."""
    theirs, ours = build(name, dict(input_size=2, hidden_size=3), 100 + len(name), backend="reference")
    x = torch.randn(4000, 2, 2)
    ours_grads, theirs_grads = loss_and_grads(ours, x), loss_and_grads(theirs.double(), x.double())
    for got, want in zip(ours_grads, theirs_grads, strict=True):
        assert torch.isfinite(got).all()
        assert relative_error(got, want) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_autocast_runs_in_the_autocast_dtype_like_torch_nn(name):
    """Under CPU autocast (bfloat16) the modules run, forward and backward, with at most twice the
    error torch.nn shows under the same autocast (both against torch.nn in float64), and return
    torch.nn's dtypes (float32 from GRU and the LSTM and GRU cells, whose state updates promote)."""
    kwargs = dict(input_size=3, hidden_size=33)
    if not name.endswith("Cell"):
        kwargs.update(num_layers=2, bidirectional=True)
    theirs, ours = build(name, kwargs, 110)
    exact = getattr(nn, name)(**kwargs, dtype=torch.float64)
    exact.load_state_dict(theirs.state_dict())
    x = torch.randn(9, 5, 3) if not name.endswith("Cell") else torch.randn(5, 3)

    def run(model, dtype, autocast):
        outputs_and_grads = cell_outputs_and_grads if name.endswith("Cell") else loss_and_grads
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return outputs_and_grads(model, x.to(dtype))

    want = run(exact, torch.float64, False)
    ours_values = run(ours, torch.float32, True)
    # torch.nn's LSTM runs oneDNN's, which has no bfloat16 LSTM on a CPU without bfloat16 support
    # (AVX2 alone: "could not create a primitive descriptor"); its errors are then those of its
    # ATen path, which returns float32 where oneDNN's returns bfloat16.
    onednn_lstm = name != "LSTM" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with torch.backends.mkldnn.flags(enabled=torch.backends.mkldnn.is_available() and onednn_lstm):
        theirs_values = run(theirs, torch.float32, True)
    promoted = name in ("GRU", "LSTMCell", "GRUCell")
    assert ours_values[0].dtype == (torch.float32 if promoted else torch.bfloat16)
    if onednn_lstm:
        assert theirs_values[0].dtype == ours_values[0].dtype
    assert all(g.dtype == torch.float32 for g in ours_values[2:]), "parameter gradients stay float32"
    for got, reference_value, expected in zip(ours_values, theirs_values, want, strict=True):
        assert relative_error(got, expected) <= 2 * relative_error(reference_value, expected)


def cell_outputs_and_grads(model, x):
    x = x.clone().requires_grad_()
    output = model(x)
    output = output if isinstance(output, tuple) else (output,)
    loss = sum(o.float().pow(2).sum() for o in output)
    return [output[0].detach()] + list(torch.autograd.grad(loss, [x, *model.parameters()]))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2)),
        ("GRU", dict(num_layers=2, bidirectional=True)),
        ("RNN", dict(nonlinearity="tanh", bidirectional=True)),
    ],
    ids=["LSTM", "GRU", "RNN"],
)
def test_double_backward_equals_torch_nn(name, kwargs):
    """A gradient penalty (the gradient of a function of dL/dx) on packed, unsorted input."""
    theirs, ours = build(name, dict(input_size=3, hidden_size=5, **kwargs), 120, backend="reference")
    theirs.double()
    ours.double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([3, 6, 1, 4])

    def penalty_grads(model):
        leaf = x.clone().requires_grad_()
        output, _ = model(pack_padded_sequence(leaf, lengths, enforce_sorted=False))
        (dx,) = torch.autograd.grad(output.data.tanh().sum(), leaf, create_graph=True)
        return torch.autograd.grad(dx.pow(2).sum(), [leaf, *model.parameters()])

    for got, want in zip(penalty_grads(ours), penalty_grads(theirs), strict=True):
        assert relative_error(got, want) <= 1e-10


HALF_CASES = [
    GridCase("LSTM", 2, "packed", True, False, True, True, hx=True),
    GridCase("GRU", 2, "padded", True, True, True, False),
    GridCase("RNN_TANH", 1, "unbatched", False, False, True, False, hx=True),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", HALF_CASES, ids=str)
def test_half_precision_within_twice_torch_nn_error(case, dtype):
    """float16/bfloat16: every output and gradient within 2x the error of torch.nn in that dtype,
    both measured against torch.nn in float64 (DESIGN.md)."""
    seed = 130 + HALF_CASES.index(case)
    exact, ours = make_pair(case, dtype, seed)
    theirs = THEIRS[case.cell](**constructor_kwargs(case), dtype=dtype)
    theirs.load_state_dict(exact.state_dict())
    data = draw_data(case, seed)
    want = run_module(exact, case, data, torch.float64, seed)
    got = run_module(ours, case, data, dtype, seed)
    baseline = run_module(theirs, case, data, dtype, seed)
    for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        if name in want:
            assert torch.equal(got.pop(name), want.pop(name))
            baseline.pop(name)
    for name, expected in want.items():
        error, torch_nn_error = relative_error(got[name], expected), relative_error(baseline[name], expected)
        assert error <= 2 * torch_nn_error, f"{name}: {error:.3g} vs torch.nn's {torch_nn_error:.3g}"


def test_empty_batch_like_torch_nn():
    theirs, ours = build("LSTM", dict(input_size=3, hidden_size=4, num_layers=2), 140, backend="reference")
    x = torch.randn(5, 0, 3, requires_grad=True)
    (out_ours, (h_ours, c_ours)), (out_theirs, (h_theirs, c_theirs)) = ours(x), theirs(x)
    assert out_ours.shape == out_theirs.shape and h_ours.shape == h_theirs.shape and c_ours.shape == c_theirs.shape
    out_ours.sum().backward()
    assert x.grad.shape == x.shape
