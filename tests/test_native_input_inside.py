"""fused_rnn::native_lstm_input_inference: LSTM inference of xw = x @ w_ih^T + bias, whose steps
run the projection themselves where each thread has rows of its own (csrc/cpu/lstm.cpp,
runs_input_inside; with 2 threads from B = 16), and otherwise one GEMM first; and
fused_rnn::native_lstm_packed_input_inference, the same on packed rows.

Both paths against the float64 reference (odd sizes, unsorted lengths, the projection, no bias),
NaN-poisoned allocations, which path a batch takes, opcheck, the errors, and the modules' no-grad
forward on the new op against torch.nn.
"""

from __future__ import annotations

import re

import pytest
import torch

import fused_rnn
from fused_rnn import native, ops, packed_ops, reference
from fused_rnn.parity import poisoned_allocations

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

F64, F32 = torch.float64, torch.float32


@pytest.fixture(autouse=True)
def two_threads():
    """The rule depends on the team size: every test runs with the 2 threads it assumes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _inputs(T, B, I, H, P, dtype, lengths, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = P or H

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)

    x = rand(T, B, I)
    w_ih, w_hh = rand(4 * H, I, scale=0.3), rand(4 * H, state, scale=0.3)
    b = rand(4 * H) if bias else None
    w_hr = rand(P, H, scale=0.3) if P else None
    h0, c0 = rand(B, state), rand(B, H)
    if lengths == "unsorted":
        lens = torch.randint(1, T + 1, (B,), generator=g)
        lens[0] = T
    elif lengths == "sorted":
        lens = torch.randint(1, T + 1, (B,), generator=g).sort(descending=True)[0]
    else:
        lens = None
    return x, w_ih, b, w_hh, w_hr, h0, c0, lens


def _reference(x, w_ih, b, w_hh, w_hr, h0, c0, lengths):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    xw = d(x) @ d(w_ih).t() + (0 if b is None else d(b))
    return reference.lstm_forward(xw, d(w_hh), d(w_hr), d(h0), d(c0), lengths)[:3]


def _outside(x, w_ih, b, w_hh, w_hr, h0, c0, lengths):
    """The projection as one GEMM before the steps: the native linear, then lstm_inference."""
    xw = native.linear(x.reshape(-1, x.shape[2]), w_ih, b).view(x.shape[0], x.shape[1], -1)
    return native.lstm_inference(xw, w_hh, w_hr, h0, c0, lengths)


CASES = [
    # T, B, I, H, P, dtype, lengths, bias, projection inside the steps (None: not told apart)
    (7, 17, 13, 33, 0, F64, None, True, True),
    (5, 64, 20, 40, 0, F32, "sorted", True, True),
    (6, 20, 9, 21, 7, F64, "unsorted", True, True),
    (3, 33, 5, 17, 0, F32, None, False, None),  # no bias: both paths sum x W_ih + h W_hh alike
    (1, 40, 6, 10, 0, F64, None, True, True),
    (9, 16, 300, 70, 0, F32, "unsorted", True, True),
    (7, 5, 13, 33, 0, F64, "unsorted", True, False),
    (4, 15, 13, 33, 5, F32, None, True, False),
    (3, 16, 100, 300, 0, F64, None, True, False),  # 5.6 MiB of weights and B < 32: split by units
]


@pytest.mark.parametrize("T, B, I, H, P, dtype, lengths, bias, inside", CASES)
def test_matches_float64_reference_and_takes_the_expected_path(T, B, I, H, P, dtype, lengths, bias, inside):
    args = _inputs(T, B, I, H, P, dtype, lengths, bias)
    torch.use_deterministic_algorithms(True)  # at::empty fills with NaN
    try:
        with poisoned_allocations():
            got = native.lstm_input_inference(*args)
    finally:
        torch.use_deterministic_algorithms(False)
    exact = _reference(*args)
    limit = 1e-12 if dtype == F64 else 2e-5
    for name, value, want in zip(("hs", "h_n", "c_n"), got, exact):
        assert value.dtype == dtype and value.shape == want.shape, name
        error = (value.double() - want).abs().max().item()
        assert error <= limit * max(1.0, want.abs().max().item()), f"{name}: {error:.3g}"
    # The path: the steps add the bias after x W_ih + h W_hh, the GEMM before them adds it to x W_ih,
    # so the results differ in some last bits; the fallback is that path exactly.
    if inside is not None:
        outside = _outside(*args)
        same = all(torch.equal(a, b) for a, b in zip(got, outside))
        assert same != inside


@pytest.mark.parametrize("B, dtype", [(21, F64), (40, F32), (6, F64)], ids=["inside-f64", "inside-f32", "first"])
def test_packed_rows_match_the_padded_op(B, dtype):
    """Packed x [N, I] by batch_sizes: the reference's results on the packed rows, and with the
    projection inside the steps bitwise the padded op's on the same rows."""
    args = list(_inputs(8, B, 15, 23, 0, dtype, "sorted"))
    x, lengths = args[0], args[7]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
    hs, h_n, c_n = native.lstm_packed_input_inference(packed.data, *args[1:7], packed.batch_sizes)
    padded = native.lstm_input_inference(*args)
    exact = _reference(*args)
    as_packed = lambda t: torch.nn.utils.rnn.pack_padded_sequence(t, lengths).data  # noqa: E731
    limit = 1e-12 if dtype == F64 else 2e-5
    for value, want in ((hs, as_packed(exact[0])), (h_n, exact[1]), (c_n, exact[2])):
        assert (value.double() - want).abs().max().item() <= limit
    if B >= 16:
        assert torch.equal(hs, as_packed(padded[0]))
        assert torch.equal(h_n, padded[1]) and torch.equal(c_n, padded[2])


def test_no_bias_equals_a_zero_bias():
    args = list(_inputs(6, 18, 11, 19, 0, F64, "unsorted"))
    without = native.lstm_input_inference(*args[:2], None, *args[3:])
    args[2] = torch.zeros_like(args[2])
    with_zero = native.lstm_input_inference(*args)
    assert all(torch.equal(a, b) for a, b in zip(without, with_zero))


@pytest.mark.parametrize("B", [3, 16], ids=["projection-first", "projection-inside"])
@pytest.mark.parametrize("proj", [0, 3])
def test_opcheck(B, proj):
    lengths = torch.tensor([3] + [1] * (B - 1))
    x, w_ih, b, w_hh, w_hr, h0, c0, _ = _inputs(3, B, 4, 5, proj, F64, None)
    torch.library.opcheck(
        torch.ops.fused_rnn.native_lstm_input_inference.default, (x, w_ih, b, w_hh, w_hr, h0, c0, lengths)
    )
    torch.library.opcheck(ops.lstm_input_inference, (x, w_ih, b, w_hh, w_hr, h0, c0, lengths, "native"))
    torch.library.opcheck(ops.lstm_input_inference, (x, w_ih, None, w_hh, w_hr, h0, c0, None, "reference"))
    batch_sizes = torch.tensor([B, 1, 1])
    packed_x = torch.cat([x[0], x[1, :1], x[2, :1]])
    torch.library.opcheck(
        torch.ops.fused_rnn.native_lstm_packed_input_inference.default,
        (packed_x, w_ih, b, w_hh, w_hr, h0, c0, batch_sizes),
    )
    torch.library.opcheck(
        packed_ops.lstm_packed_input_inference, (packed_x, w_ih, b, w_hh, w_hr, h0, c0, batch_sizes, "native")
    )


def _bad(name):
    x, w_ih, b, w_hh, _, h0, c0, _ = _inputs(3, 16, 4, 5, 0, F32, None)
    good = dict(x=x, w_ih=w_ih, bias=b, w_hh=w_hh, w_hr=None, h0=h0, c0=c0, lengths=None)
    bad = {
        "x": x[0],
        "w_ih": w_ih[:, :3],
        "bias": b[:7],
        "w_hh": w_hh[:18],
        "h0": h0[:3],
        "dtype": None,
    }[name]
    if name == "dtype":
        good["w_ih"] = w_ih.double()
    else:
        good[name] = bad
    return good


@pytest.mark.parametrize(
    "name, message",
    [
        ("x", "x must be 3-D [T, B, I], got shape [16, 4]"),
        ("w_ih", "w_ih must have shape [4H, I] = [20, 4], got [20, 3]"),
        ("bias", "bias must have shape [4H] = [20], got [7]"),
        ("w_hh", "w_hh must have shape [4H, P] (first dimension a multiple of 4), got [18, 5]"),
        ("h0", "h0 must have shape [B, P] = [16, 5], got [3, 5]"),
        ("dtype", "w_ih must have dtype torch.float32 (the dtype of x), got torch.float64"),
    ],
)
def test_cpp_op_names_the_bad_argument(name, message):
    args = _bad(name)
    with pytest.raises(RuntimeError, match="fused_rnn::native_lstm_input_inference: " + re.escape(message)):
        torch.ops.fused_rnn.native_lstm_input_inference(*args.values())


@pytest.mark.parametrize(
    "batch_first, bidirectional, proj_size, layers, batch",
    [(False, False, 0, 1, 17), (True, True, 0, 2, 20), (False, True, 6, 2, 33), (True, False, 0, 1, 5)],
)
def test_module_inference_matches_torch_nn(batch_first, bidirectional, proj_size, layers, batch):
    """The no-grad forward of fused_rnn.LSTM runs lstm_input_inference on every layer; packed
    input keeps the projection first."""
    torch.manual_seed(0)
    kwargs = dict(
        num_layers=layers, bidirectional=bidirectional, proj_size=proj_size, batch_first=batch_first, dtype=F64
    )
    ours = fused_rnn.LSTM(11, 19, backend="native", **kwargs)
    theirs = torch.nn.LSTM(11, 19, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn((batch, 9, 11) if batch_first else (9, batch, 11), dtype=F64)
    lengths = torch.randint(1, 10, (batch,))
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    with torch.no_grad():
        for inputs in (x, packed):
            (out, (h_n, c_n)), (want, (h_want, c_want)) = ours(inputs), theirs(inputs)
            if isinstance(out, torch.nn.utils.rnn.PackedSequence):
                out, want = out.data, want.data
            for value, expected in ((out, want), (h_n, h_want), (c_n, c_want)):
                torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


def test_module_runs_the_op_without_grad_only(monkeypatch):
    calls = []
    original = native.lstm_input_inference
    monkeypatch.setattr(native, "lstm_input_inference", lambda *args: calls.append(1) or original(*args))
    model = fused_rnn.LSTM(7, 9, num_layers=2, bidirectional=True, backend="native")
    x = torch.randn(5, 16, 7)
    with torch.no_grad():
        model(x)
    assert len(calls) == 4  # every layer and direction
    model(x)[0].sum().backward()
    assert len(calls) == 4
    packed_calls = []
    original_packed = native.lstm_packed_input_inference
    monkeypatch.setattr(
        native, "lstm_packed_input_inference", lambda *args: packed_calls.append(1) or original_packed(*args)
    )
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.arange(16, 0, -1).clamp(max=5))
    with torch.no_grad():
        model(packed)
    assert len(packed_calls) == 4 and len(calls) == 4
