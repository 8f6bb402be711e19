"""The float64 reference recurrences: explicit backward against autograd, and lengths semantics.

The explicit backward of each cell is the specification the fused backward kernels are tested
against, so it is checked here against autograd through the reference forward, in float64, on
odd sizes, with and without per-row lengths.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn import ops, reference
from fused_rnn.parity import CELLS, Case, make_inputs, relative_error

FLOAT64_TOLERANCE = 1e-10
SHAPES = [(7, 5, 3, 2), (1, 3, 5, 3), (9, 1, 4, 1)]  # (T, B, H, proj_size of lstm_proj)


def draw_inputs(cell: str, shape, with_lengths: bool, seed: int) -> dict:
    """float64 inputs; lengths (when asked) hold T, 1 and random values in [1, T]."""
    steps, batch, hidden, proj = shape
    case = Case(cell, steps, batch, hidden, proj=proj, lengths=with_lengths, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = make_inputs(case, generator)
    if with_lengths:
        lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
        lengths[0] = steps
        lengths[-1] = 1
        inputs["lengths"] = lengths
    return inputs


def run_forward(cell: str, x: dict) -> dict:
    """The reference forward of `cell` -> named outputs (differentiable ones and saved tensors)."""
    if cell.startswith("rnn"):
        hs, h_n = reference.rnn_forward(x["xw"], x["w_hh"], x["h0"], x["lengths"], cell == "rnn_relu")
        return {"hs": hs, "h_n": h_n}
    if cell.startswith("lstm"):
        hs, h_n, c_n, cs, gates = reference.lstm_forward(
            x["xw"], x["w_hh"], x["w_hr"], x["h0"], x["c0"], x["lengths"]
        )
        return {"hs": hs, "h_n": h_n, "c_n": c_n, "cs": cs, "gates": gates}
    hs, h_n, gates = reference.gru_forward(x["xw"], x["w_hh"], x["b_hn"], x["h0"], x["lengths"])
    return {"hs": hs, "h_n": h_n, "gates": gates}


def run_explicit_backward(cell: str, x: dict, out: dict, grads: dict) -> dict:
    """The explicit reference backward plus the weight-gradient GEMMs the ops do -> named grads."""
    lengths = x["lengths"]
    if cell.startswith("rnn"):
        dxw, dh0 = reference.rnn_backward(
            grads["hs"], grads["h_n"], x["w_hh"], x["h0"], lengths, out["hs"], cell == "rnn_relu"
        )
        return {"xw": dxw, "h0": dh0, "w_hh": ops.recurrent_weight_grad([dxw], x["h0"], out["hs"])}
    if cell.startswith("lstm"):
        dxw, dh0, dc0, dw_hr = reference.lstm_backward(
            grads["hs"], grads["h_n"], grads["c_n"], x["w_hh"], x["w_hr"], x["h0"], x["c0"],
            lengths, out["hs"], out["cs"], out["gates"],
        )
        result = {"xw": dxw, "h0": dh0, "c0": dc0, "w_hh": ops.recurrent_weight_grad([dxw], x["h0"], out["hs"])}
        if x["w_hr"] is not None:
            result["w_hr"] = dw_hr
        else:
            assert dw_hr.numel() == 0
        return result
    dxw, d_hn, dh0 = reference.gru_backward(
        grads["hs"], grads["h_n"], x["w_hh"], x["b_hn"], x["h0"], lengths, out["hs"], out["gates"]
    )
    hidden = x["h0"].shape[1]
    d_hidden_gates = torch.cat([dxw[..., : 2 * hidden], d_hn], dim=2)
    return {
        "xw": dxw,
        "h0": dh0,
        "b_hn": d_hn.sum(dim=(0, 1)),
        "w_hh": ops.recurrent_weight_grad([d_hidden_gates], x["h0"], out["hs"]),
    }


DIFFERENTIABLE_OUTPUTS = ("hs", "h_n", "c_n")


def random_output_grads(out: dict, generator: torch.Generator) -> dict:
    return {
        name: torch.randn(out[name].shape, generator=generator, dtype=torch.float64)
        for name in DIFFERENTIABLE_OUTPUTS
        if name in out
    }


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-H{}-P{}".format(*s))
@pytest.mark.parametrize("cell", CELLS)
def test_explicit_backward_equals_autograd(cell, shape, with_lengths):
    seed = 1000 + 97 * CELLS.index(cell) + 13 * SHAPES.index(shape) + with_lengths
    x = draw_inputs(cell, shape, with_lengths, seed)
    names = [n for n in ("xw", "w_hh", "h0", "c0", "w_hr", "b_hn") if x.get(n) is not None]
    leaves = {n: x[n].clone().requires_grad_() for n in names}
    out = run_forward(cell, {**x, **leaves})
    grads = random_output_grads(out, torch.Generator().manual_seed(seed + 1))
    expected = torch.autograd.grad(
        [out[n] for n in grads], [leaves[n] for n in names], [grads[n] for n in grads]
    )
    detached = {n: t.detach() for n, t in out.items()}
    explicit = run_explicit_backward(cell, x, detached, grads)
    assert sorted(explicit) == sorted(names)
    for name, want in zip(names, expected):
        error = relative_error(explicit[name], want)
        assert error <= FLOAT64_TOLERANCE, f"d_{name}: relative error {error:.3g}"


@pytest.mark.parametrize("cell", CELLS)
def test_rows_stop_at_their_length(cell):
    """Past its length a row emits zeros everywhere and keeps its state; each row equals the same
    row run alone for its own length, forward and backward."""
    steps, batch = 8, 5
    seed = 2000 + CELLS.index(cell)
    x = draw_inputs(cell, (steps, batch, 3, 2), with_lengths=True, seed=seed)
    lengths = x["lengths"]
    out = run_forward(cell, x)
    grads = random_output_grads(out, torch.Generator().manual_seed(seed + 1))
    dx = run_explicit_backward(cell, x, out, grads)

    per_step = ["hs"] + [n for n in ("cs", "gates") if n in out]
    for b in range(batch):
        n = int(lengths[b])
        for name in per_step:
            assert torch.all(out[name][n:, b] == 0), f"{name} of row {b} is not zero past length {n}"
        assert torch.all(dx["xw"][n:, b] == 0), f"dxw of row {b} is not zero past length {n}"
        assert torch.equal(out["h_n"][b], out["hs"][n - 1, b])
        if "c_n" in out:
            assert torch.equal(out["c_n"][b], out["cs"][n - 1, b].to(out["c_n"].dtype))

        alone = dict(x)
        alone.update(xw=x["xw"][:n, b : b + 1], h0=x["h0"][b : b + 1], lengths=None)
        if "c0" in x:
            alone["c0"] = x["c0"][b : b + 1]
        alone_out = run_forward(cell, alone)
        for name in ("hs", "h_n", "c_n", "cs", "gates"):
            if name in out:
                got = out[name][:n, b : b + 1] if name in per_step else out[name][b : b + 1]
                assert relative_error(got, alone_out[name]) <= FLOAT64_TOLERANCE, f"{name} of row {b}"

        alone_grads = {"hs": grads["hs"][:n, b : b + 1], "h_n": grads["h_n"][b : b + 1]}
        if "c_n" in grads:
            alone_grads["c_n"] = grads["c_n"][b : b + 1]
        alone_dx = run_explicit_backward(cell, alone, alone_out, alone_grads)
        assert relative_error(dx["xw"][:n, b : b + 1], alone_dx["xw"]) <= FLOAT64_TOLERANCE
        for name in ("h0", "c0"):
            if name in dx:
                assert relative_error(dx[name][b : b + 1], alone_dx[name]) <= FLOAT64_TOLERANCE


@pytest.mark.parametrize("cell", CELLS)
def test_full_lengths_equal_no_lengths(cell):
    """lengths all equal to T is the same computation as no lengths."""
    x = draw_inputs(cell, (6, 4, 5, 3), with_lengths=False, seed=3000 + CELLS.index(cell))
    with_full = run_forward(cell, {**x, "lengths": torch.full((4,), 6, dtype=torch.int64)})
    without = run_forward(cell, x)
    for name, value in without.items():
        assert torch.equal(with_full[name], value), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_half_inputs_keep_the_documented_dtypes(cell, dtype):
    """Half inputs: per-step outputs in the input dtype, LSTM cell states in float32, and values
    close to the float64 computation on the same (rounded) inputs."""
    x = draw_inputs(cell, (5, 3, 4, 2), with_lengths=True, seed=4000 + CELLS.index(cell))
    half = {n: t if t is None or n == "lengths" else t.to(dtype) for n, t in x.items()}
    rounded = {n: t if t is None or n == "lengths" else t.double() for n, t in half.items()}
    out, exact = run_forward(cell, half), run_forward(cell, rounded)
    for name, value in out.items():
        assert value.dtype == (torch.float32 if name == "cs" else dtype), name
        assert relative_error(value, exact[name]) < 2e-2, name
