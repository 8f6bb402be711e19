"""Parity of a backend's recurrence ops against the float64 reference.

One case = one cell, one shape, one dtype, one device. The inputs are drawn in float64, cast to the
dtype under test, run through the custom op of the backend (forward, then backward with fixed random
output gradients), and compared with the float64 reference run on the same (cast) inputs:

    relative error = ||out - ref|| / ||ref||       (NaN or inf anywhere -> inf)

for every forward output and every gradient (xw, w_hh, h0, c0, w_hr, b_hn). `fused-rnn check` and
the backend tests share this module.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import ops

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru")
GATE_COUNT = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "lstm_proj": 4, "gru": 3}

# Thresholds on the largest relative error of a case (see DESIGN.md, numerics).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
TF32_TOLERANCE = 5e-4
HALF_FACTOR = 2.0  # half types: at most this many times the reference's own error in that dtype


@dataclass(frozen=True)
class Case:
    """One recurrence shape: `cell` in CELLS, T steps, B rows, H hidden units; `proj` is the
    projection size of lstm_proj; `lengths` gives rows of random lengths in [1, T]."""

    cell: str
    steps: int
    batch: int
    hidden: int
    proj: int = 0
    lengths: bool = False
    seed: int = 0

    def __str__(self) -> str:
        proj = f"-P{self.proj}" if self.cell == "lstm_proj" else ""
        lengths = "-lengths" if self.lengths else ""
        return f"{self.cell}-T{self.steps}-B{self.batch}-H{self.hidden}{proj}{lengths}"


def relative_error(value: Tensor, expected: Tensor) -> float:
    """||value - expected|| / ||expected|| in float64; inf if value has NaN/inf or shapes differ."""
    if value.shape != expected.shape:
        return math.inf
    value, expected = value.detach().double().cpu(), expected.detach().double().cpu()
    if not torch.isfinite(value).all():
        return math.inf
    scale = expected.norm().item()
    difference = (value - expected).norm().item()
    return difference / scale if scale > 0 else difference


def make_inputs(case: Case, generator: torch.Generator) -> dict[str, Optional[Tensor]]:
    """float64 CPU inputs of the op named by case.cell; weights scaled like torch.nn's init."""
    T, B, H = case.steps, case.batch, case.hidden
    state = case.proj if case.cell == "lstm_proj" else H
    scale = 1.0 / math.sqrt(H)

    def uniform(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    gates = GATE_COUNT[case.cell]
    inputs: dict[str, Optional[Tensor]] = {
        "xw": normal(T, B, gates * H),
        "w_hh": uniform(gates * H, state),
        "h0": normal(B, state) * 0.5,
    }
    if case.cell.startswith("lstm"):
        inputs["w_hr"] = uniform(state, H) if case.cell == "lstm_proj" else None
        inputs["c0"] = normal(B, H) * 0.5
    if case.cell == "gru":
        inputs["b_hn"] = uniform(H)
    inputs["lengths"] = (
        torch.randint(1, T + 1, (B,), generator=generator) if case.lengths else None
    )
    return inputs


def differentiable_inputs(cell: str, inputs: dict[str, Optional[Tensor]]) -> list[str]:
    """Names of the inputs of `cell`'s forward op that gradients flow to."""
    if cell.startswith("rnn"):
        return ["xw", "w_hh", "h0"]
    if cell.startswith("lstm"):
        return ["xw", "w_hh", "h0", "c0"] + (["w_hr"] if inputs["w_hr"] is not None else [])
    return ["xw", "w_hh", "b_hn", "h0"]


def op_arguments(cell: str, inputs: dict[str, Optional[Tensor]]) -> tuple[str, tuple]:
    """The op family of `cell` ("rnn", "lstm" or "gru") and the arguments of its forward function
    (a backend's `<family>_forward`; the custom op takes `backend` after them) from make_inputs' dict."""
    x = inputs
    if cell.startswith("rnn"):
        return "rnn", (x["xw"], x["w_hh"], x["h0"], x["lengths"], cell == "rnn_relu")
    if cell.startswith("lstm"):
        return "lstm", (x["xw"], x["w_hh"], x["w_hr"], x["h0"], x["c0"], x["lengths"])
    return "gru", (x["xw"], x["w_hh"], x["b_hn"], x["h0"], x["lengths"])


def backward_arguments(
    cell: str, inputs: dict[str, Optional[Tensor]], outputs: tuple, grads: list[Tensor]
) -> tuple:
    """The arguments of a backend's `<family>_backward` for `cell`, given its forward's full outputs
    (saved tensors included) and the gradients of hs, h_n (and c_n)."""
    x = inputs
    if cell.startswith("rnn"):
        return (grads[0], grads[1], x["w_hh"], x["h0"], x["lengths"], outputs[0], cell == "rnn_relu")
    if cell.startswith("lstm"):
        hs, _, _, cs, gates = outputs
        return (*grads, x["w_hh"], x["w_hr"], x["h0"], x["c0"], x["lengths"], hs, cs, gates)
    hs, _, gates = outputs
    return (*grads, x["w_hh"], x["b_hn"], x["h0"], x["lengths"], hs, gates)


def run_op(cell: str, backend: str, inputs: dict[str, Optional[Tensor]]) -> list[Tensor]:
    """Call the forward op of `cell` -> its differentiable outputs (hs, h_n[, c_n])."""
    family, args = op_arguments(cell, inputs)
    outputs = getattr(ops, f"{family}_forward")(*args, backend)
    return list(outputs[:3] if family == "lstm" else outputs[:2])


def module_outputs_and_grads(
    module: torch.nn.Module,
    x: Tensor,
    states: list[Tensor],
    lengths: Optional[Tensor],
    weights: list[Tensor],
) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """A recurrent module run on x (packed by `lengths` unless None) from the initial states: its
    outputs (padded output, final states) and the gradients of sum(output_i * weights_i) with
    respect to the input, the initial states and every parameter."""
    x = x.detach().requires_grad_()
    states = [s.detach().requires_grad_() for s in states]
    batch_first = module.batch_first
    packed = lengths is not None
    inputs = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False) if packed else x
    hx = tuple(states) if len(states) == 2 else states[0]
    output, final = module(inputs, hx)
    if packed:
        output, _ = pad_packed_sequence(output, batch_first=batch_first)
    finals = list(final) if isinstance(final, tuple) else [final]
    outputs = [output] + finals
    loss = sum((o * w.to(o)).sum() for o, w in zip(outputs, weights))
    grads = torch.autograd.grad(loss, [x, *states, *module.parameters()])
    return outputs, grads


def forward_backward(
    case: Case,
    backend: str,
    dtype: torch.dtype,
    device: torch.device,
    inputs: dict[str, Optional[Tensor]],
    grad_outputs: list[Tensor],
) -> dict[str, Tensor]:
    """Outputs and input gradients of `backend` on the inputs cast to dtype/device, by name."""
    cast = {
        name: None if t is None else (t.to(device) if name == "lengths" else t.to(device, dtype))
        for name, t in inputs.items()
    }
    names = differentiable_inputs(case.cell, cast)
    for name in names:
        cast[name].requires_grad_()
    outputs = run_op(case.cell, backend, cast)
    grads = torch.autograd.grad(outputs, [cast[n] for n in names], [g.to(device, dtype) for g in grad_outputs])
    result = {f"out{i}": o for i, o in enumerate(outputs)}
    result.update({f"d_{n}": g for n, g in zip(names, grads)})
    return result


def case_errors(
    case: Case, backend: str, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Relative error of every output and gradient of `backend` against the float64 reference."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(case.seed)
    inputs = make_inputs(case, generator)
    # The reference runs on the inputs as the backend sees them (rounded to dtype), in float64.
    rounded = {n: None if t is None or n == "lengths" else t.to(dtype).double() for n, t in inputs.items()}
    rounded["lengths"] = inputs["lengths"]
    with torch.no_grad():
        outputs = run_op(case.cell, "reference", rounded)
    grad_outputs = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in outputs]
    expected = forward_backward(case, "reference", torch.float64, torch.device("cpu"), rounded, grad_outputs)
    actual = forward_backward(case, backend, dtype, device, inputs, grad_outputs)
    return {name: relative_error(actual[name], expected[name]) for name in expected}


TORCH_NN_CELLS = {
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {}),
    "gru": ("GRU", {}),
}


def _torch_nn_run(case: Case, inputs: dict, grad_outputs: list[Tensor], dtype: torch.dtype,
                  device: torch.device) -> list[Tensor]:
    """The op of `case` computed by torch.nn in `dtype` on `device`: a one-layer module whose W_ih is
    the identity and whose biases are zero (so its input is xw), except GRU's b_hn; lengths become a
    packed sequence. -> outputs then input gradients, in case_errors' order."""
    kind, options = TORCH_NN_CELLS[case.cell]
    gates = GATE_COUNT[case.cell] * case.hidden
    if case.cell == "lstm_proj":
        options = {"proj_size": case.proj}
    module = getattr(torch.nn, kind)(gates, case.hidden, **options).to(device, dtype)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.eye(gates))
        module.bias_ih_l0.zero_()
        module.bias_hh_l0.zero_()
        module.weight_hh_l0.copy_(inputs["w_hh"])
        if case.cell == "gru":
            module.bias_hh_l0[2 * case.hidden :].copy_(inputs["b_hn"])
        if case.cell == "lstm_proj":
            module.weight_hr_l0.copy_(inputs["w_hr"])
    xw = inputs["xw"].to(device, dtype).requires_grad_()
    states = [inputs["h0"]] + ([inputs["c0"]] if case.cell.startswith("lstm") else [])
    states = [s.to(device, dtype).unsqueeze(0).requires_grad_() for s in states]
    lengths = inputs["lengths"]
    sequence = xw if lengths is None else pack_padded_sequence(xw, lengths, enforce_sorted=False)
    output, final = module(sequence, tuple(states) if len(states) == 2 else states[0])
    if lengths is not None:
        output = pad_packed_sequence(output, total_length=case.steps)[0]
    outputs = [output] + [f.squeeze(0) for f in (final if isinstance(final, tuple) else (final,))]
    weights = {"xw": xw, "w_hh": module.weight_hh_l0, "h0": states[0]}
    if case.cell.startswith("lstm"):
        weights["c0"] = states[1]
    if case.cell == "lstm_proj":
        weights["w_hr"] = module.weight_hr_l0
    if case.cell == "gru":
        weights["b_hn"] = module.bias_hh_l0
    names = differentiable_inputs(case.cell, inputs)
    grads = torch.autograd.grad(outputs, [weights[n] for n in names], [g.to(device, dtype) for g in grad_outputs])
    if case.cell == "gru":
        grads = [g[2 * case.hidden :] if n == "b_hn" else g for n, g in zip(names, grads)]
    return outputs + list(grads)


def torch_nn_error(case: Case, dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The largest relative error of torch.nn doing the op of `case` in `dtype` on `device`, against
    torch.nn in float64 on the CPU, with the same inputs and output gradients as case_errors."""
    generator = torch.Generator().manual_seed(case.seed)
    inputs = make_inputs(case, generator)
    rounded = {n: t if t is None or n == "lengths" else t.to(dtype).double() for n, t in inputs.items()}
    with torch.no_grad():
        outputs = run_op(case.cell, "reference", rounded)
    grad_outputs = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in outputs]
    expected = _torch_nn_run(case, rounded, grad_outputs, torch.float64, torch.device("cpu"))
    actual = _torch_nn_run(case, rounded, grad_outputs, dtype, torch.device(device))
    return max(relative_error(a, e) for a, e in zip(actual, expected))


def tolerance(case: Case, dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The largest relative error a backend may show on `case` in `dtype` (DESIGN.md, numerics).

    Half types: HALF_FACTOR times the error of torch.nn doing the same computation in that dtype on
    the same device (torch_nn_error).
    """
    device = torch.device(device)
    if dtype in TOLERANCE:
        tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
        return TF32_TOLERANCE if (tf32 and dtype == torch.float32) else TOLERANCE[dtype]
    return HALF_FACTOR * torch_nn_error(case, dtype, device)


@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    """Fill every tensor that torch.empty/empty_like/new_empty allocate with NaN, so that an
    element a kernel forgets to write cannot pass a parity check."""
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)

    def poison(tensor: Tensor) -> Tensor:
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        return tensor

    torch.empty = lambda *a, **k: poison(originals[0](*a, **k))
    torch.empty_like = lambda *a, **k: poison(originals[1](*a, **k))
    torch.Tensor.new_empty = lambda self, *a, **k: poison(originals[2](self, *a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals
