"""The native backend's ops: torch.library.opcheck of every C++ op (fused_rnn::native_*, their
schemas, fake functions and dynamic-shape tracing) and of the user-facing custom ops with
backend="native" (autograd included), and torch.compile(fullgraph=True) of a module."""

from __future__ import annotations

import pytest
import torch

import fused_rnn
from fused_rnn import native, ops

REASON = native.unavailable_reason(torch.device("cpu"))
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"native backend unavailable: {REASON}")

T, B, H, P = 3, 2, 5, 3
CELLS = ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"]


def _randn(*shape, requires_grad=False):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def _cases(cell: str, lengths, requires_grad: bool):
    """(Python forward op, its args, Python backward op, its args, C++ forward op, its args,
    C++ backward op, its args) at a tiny size."""
    g = requires_grad
    if cell.startswith("rnn"):
        relu = cell == "rnn_relu"
        xw, w_hh, h0 = _randn(T, B, H, requires_grad=g), _randn(H, H, requires_grad=g), _randn(B, H, requires_grad=g)
        hs, _ = ops.rnn_forward(xw, w_hh, h0, lengths, relu, "native")
        grads = (_randn(T, B, H), _randn(B, H))
        forward = (xw, w_hh, h0, lengths, relu)
        backward = (*grads, w_hh, h0, lengths, hs.detach(), relu)
        python_backward = (*grads, xw, w_hh, h0, lengths, hs.detach(), relu, "native")
        return ops.rnn_forward, (*forward, "native"), ops.rnn_backward, python_backward, "rnn", forward, backward
    if cell.startswith("lstm"):
        state = P if cell == "lstm_proj" else H
        w_hr = _randn(P, H, requires_grad=g) if cell == "lstm_proj" else None
        xw, w_hh = _randn(T, B, 4 * H, requires_grad=g), _randn(4 * H, state, requires_grad=g)
        h0, c0 = _randn(B, state, requires_grad=g), _randn(B, H, requires_grad=g)
        forward = (xw, w_hh, w_hr, h0, c0, lengths)
        hs, _, _, cs, gates = ops.lstm_forward(*forward, "native")
        grads = (_randn(T, B, state), _randn(B, state), _randn(B, H))
        backward = (*grads, w_hh, w_hr, h0, c0, lengths, hs.detach(), cs, gates)
        python_backward = (*grads, xw, w_hh, w_hr, h0, c0, lengths, hs.detach(), cs, gates, "native")
        return ops.lstm_forward, (*forward, "native"), ops.lstm_backward, python_backward, "lstm", forward, backward
    xw, w_hh = _randn(T, B, 3 * H, requires_grad=g), _randn(3 * H, H, requires_grad=g)
    b_hn, h0 = _randn(H, requires_grad=g), _randn(B, H, requires_grad=g)
    forward = (xw, w_hh, b_hn, h0, lengths)
    hs, _, gates = ops.gru_forward(*forward, "native")
    grads = (_randn(T, B, H), _randn(B, H))
    backward = (*grads, w_hh, b_hn, h0, lengths, hs.detach(), gates)
    python_backward = (*grads, xw, w_hh, b_hn, h0, lengths, hs.detach(), gates, "native")
    return ops.gru_forward, (*forward, "native"), ops.gru_backward, python_backward, "gru", forward, backward


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_cpp_ops(cell, with_lengths):
    lengths = torch.tensor([3, 1]) if with_lengths else None
    *_, name, forward, backward = _cases(cell, lengths, requires_grad=False)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, f"native_{name}_forward").default, forward)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, f"native_{name}_backward").default, backward)


def _step_cases(cell: str, bias: bool):
    """(op name, forward args of each `save`, backward args of each output_mask) of the
    single-step C++ ops at a tiny size, I = 4."""
    gates = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[cell]
    x, h0, c0 = _randn(1, B, 4), _randn(B, H), _randn(B, H)
    w_ih, w_hh = _randn(gates * H, 4), _randn(gates * H, H)
    b_ih, b_hh = (_randn(gates * H), _randn(gates * H)) if bias else (None, None)
    masks = ([True] * 5, [False, True, False, True, False], [True, False, True, False, True])
    if cell.startswith("rnn"):
        relu = cell == "rnn_relu"
        hs, _ = torch.ops.fused_rnn.native_rnn_step_forward(x, w_ih, b_ih, w_hh, b_hh, h0, relu)
        forwards = [(x, w_ih, b_ih, w_hh, b_hh, h0, relu)]
        backwards = [(_randn(1, B, H), None, x, w_ih, w_hh, bias, h0, hs, relu, mask) for mask in masks]
        return "rnn", forwards, backwards
    if cell == "lstm":
        hs, _, _, cs, saved_gates = torch.ops.fused_rnn.native_lstm_step_forward(x, w_ih, b_ih, w_hh, b_hh, h0, c0, True)
        forwards = [(x, w_ih, b_ih, w_hh, b_hh, h0, c0, save) for save in (True, False)]
        grads = (_randn(1, B, H), _randn(B, H), None)
        backwards = [(*grads, x, w_ih, w_hh, bias, h0, c0, hs, cs, saved_gates, mask) for mask in masks]
        return "lstm", forwards, backwards
    hs, _, saved_gates = torch.ops.fused_rnn.native_gru_step_forward(x, w_ih, b_ih, w_hh, b_hh, h0, True)
    forwards = [(x, w_ih, b_ih, w_hh, b_hh, h0, save) for save in (True, False)]
    backwards = [(None, _randn(B, H), x, w_ih, w_hh, b_hh, h0, hs, saved_gates, mask) for mask in masks]
    return "gru", forwards, backwards


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_opcheck_single_step_ops(cell, bias):
    """The ops of fused_rnn.native_step, with absent output gradients and partial output masks."""
    name, forwards, backwards = _step_cases(cell, bias)
    for forward in forwards:
        torch.library.opcheck(getattr(torch.ops.fused_rnn, f"native_{name}_step_forward").default, forward)
    for backward in backwards:
        torch.library.opcheck(getattr(torch.ops.fused_rnn, f"native_{name}_step_backward").default, backward)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_single_step_ops_reject_bad_arguments(cell):
    """Each step op names itself and the argument, and raises before its projection: a lone bias
    would otherwise be ignored, and the other mistakes would surface as errors of the inner ops
    about their own arguments."""
    name, forwards, backwards = _step_cases(cell, bias=True)
    forward_op = getattr(torch.ops.fused_rnn, f"native_{name}_step_forward").default
    backward_op = getattr(torch.ops.fused_rnn, f"native_{name}_step_backward").default
    args = list(forwards[0])  # x, w_ih, b_ih, w_hh, b_hh, h0, then c0 (LSTM) and a flag
    gates = args[1].size(0) // H
    shape = f"[{gates}H" if gates > 1 else "[H"
    bad_forwards = [
        (0, _randn(2, B, 4), r"x must have shape \[1, B, I\] \(one time step\), got \[2, "),
        (0, _randn(B, 4), r"x must be 3-D \[1, B, I\]"),
        (1, _randn(gates * H, 5), rf"w_ih must have shape \{shape}, I\] = \[{gates * H}, 4\], got \[{gates * H}, 5\]"),
        (3, _randn(gates * H + 1, H), rf"w_hh must have shape \{shape}, H\]"),
        (4, None, "b_ih and b_hh must both be given or both be None, got b_ih alone"),
        (2, _randn(gates * H - 1), rf"b_ih must have shape \{shape}\]"),
        (5, _randn(B + 1, H), r"h0 must have shape \[B, H\] = \[" + f"{B}, {H}" + r"\], got \[" + str(B + 1)),
        (1, args[1].float(), r"w_ih must have dtype torch.float64 \(the dtype of x\), got torch.float32"),
    ]
    if name == "lstm":
        bad_forwards.append((6, _randn(B, H + 1), r"c0 must have shape \[B, H\]"))
    for index, value, message in bad_forwards:
        bad = list(args)
        bad[index] = value
        with pytest.raises(RuntimeError, match=rf"fused_rnn::native_{name}_step_forward: {message}"):
            forward_op(*bad)
    backward = list(backwards[0])
    x_index = 3 if name == "lstm" else 2
    backward[x_index] = _randn(1, B, 5)
    with pytest.raises(RuntimeError, match=rf"fused_rnn::native_{name}_step_backward: w_ih must have shape"):
        backward_op(*backward)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", ["lstm", "lstm_proj", "gru"])
def test_opcheck_inference_ops(cell, with_lengths):
    """The C++ inference op and the user-facing one with backend="native"."""
    lengths = torch.tensor([3, 1]) if with_lengths else None
    forward_op, forward_with_backend, *_, name, forward, _ = _cases(cell, lengths, requires_grad=False)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, f"native_{name}_inference").default, forward)
    torch.library.opcheck(getattr(ops, f"{name}_inference"), forward_with_backend)


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_python_forward_ops_with_native_backend(cell):
    """Includes autograd: the op's backward runs the native backward op."""
    forward_op, forward, *_ = _cases(cell, torch.tensor([3, 1]), requires_grad=True)
    torch.library.opcheck(forward_op, forward)


def test_opcheck_python_backward_op_with_native_backend():
    """One cell: the double backward that opcheck also checks runs through the reference,
    whichever the backend (fused_rnn.ops), and is slow."""
    *_, backward_op, backward, _, _, _ = _cases("rnn_relu", torch.tensor([3, 1]), requires_grad=True)
    torch.library.opcheck(backward_op, backward)


def test_lstm_module_compiles_with_fullgraph():
    """Dynamo and Inductor trace the native op through its fake function; same results as eager."""
    torch.manual_seed(0)
    module = fused_rnn.LSTM(4, H, num_layers=2, proj_size=P, backend="native")
    x = torch.randn(T, B, 4, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True)
    out, (h_n, c_n) = compiled(x)
    expected, (h_expected, c_expected) = module(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h_n, h_expected)
    torch.testing.assert_close(c_n, c_expected)
    grads = torch.autograd.grad(out.sum() + c_n.sum(), [x, *module.parameters()])
    expected_grads = torch.autograd.grad(expected.sum() + c_expected.sum(), [x, *module.parameters()])
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad, want)


# ---------------------------------------------------------------------------------------------
# The GEMMs around the recurrence: fused_rnn::native_linear (oneDNN for float32) and the
# differentiable fused_rnn::linear op over it
# ---------------------------------------------------------------------------------------------


def _linear_operands(dtype, layout: str):
    """x [M, K] and w [N, K] at odd sizes (large enough for oneDNN to run them in float32),
    contiguous or as transposed views of other tensors."""
    generator = torch.Generator().manual_seed(len(layout))
    # Cast before the layout is made: a cast of a strided view makes a dense tensor.
    x = torch.randn(137, 69, generator=generator, dtype=torch.float64).to(dtype)
    w = torch.randn(93, 69, generator=generator, dtype=torch.float64).to(dtype)
    if layout == "transposed":
        x, w = x.t().contiguous().t(), w.t().contiguous().t()
    if layout == "sliced":  # row stride larger than the row, as a slice of gate columns makes
        x, w = torch.cat([x, x], 1)[:, :69], torch.cat([w, w], 1)[:, :69]
    if layout == "sliced-transposed":  # the transpose of such a slice, as a weight gradient takes it
        x, w = _transposed_slice(x), _transposed_slice(w)
    strides = {"contiguous": (69, 1), "transposed": (1, 137), "sliced": (138, 1), "sliced-transposed": (1, 274)}
    assert x.stride() == strides[layout]
    return x, w


def _transposed_slice(t):
    """t [R, C] as the transpose of a column slice of a [C, 2R] tensor: strides (1, 2R)."""
    return torch.cat([t.t(), t.t()], 1)[:, : t.shape[0]].t()


@pytest.mark.parametrize("bias", ["none", "vector", "matrix"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced", "sliced-transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_native_linear_equals_torch(dtype, layout, bias):
    x, w = _linear_operands(dtype, layout)
    b = {"none": None, "vector": torch.randn(93, dtype=dtype), "matrix": torch.randn(137, 93, dtype=dtype)}[bias]
    got = torch.ops.fused_rnn.native_linear(x, w, b)
    want = (x.double() @ w.double().t() + (0 if b is None else b.double())).to(dtype)
    assert got.shape == (137, 93) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("bias", ["none", "vector"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize(
    "m, k, n",
    [(1, 1, 1), (7, 0, 5), (1100, 37, 45), (65, 1500, 33), (3, 2100, 70), (64, 500, 1500)],
    ids=["1x1x1", "empty-depth", "row-blocks", "depth-blocks", "two-depth-blocks", "decoder-step"],
)
def test_float64_linear_over_the_blocks_of_the_streamed_gemm(m, k, n, layout, bias):
    """float64 runs fused_rnn's own GEMM (SequenceKernels::gemm, where build_info names it):
    rows past its row block (1024), depths past its depth block (1024), a last panel narrower
    than its 32 columns, any strides of both operands, the bias as the accumulated start, an
    empty depth."""
    generator = torch.Generator().manual_seed(m * 7 + k)
    x = torch.randn(m, k, generator=generator, dtype=torch.float64)
    w = torch.randn(n, k, generator=generator, dtype=torch.float64)
    if layout == "transposed":
        x, w = x.t().contiguous().t(), w.t().contiguous().t()
    if layout == "sliced":
        x, w = torch.cat([x, x], 1)[:, :k], torch.cat([w, w], 1)[:, :k]
    b = torch.randn(n, generator=generator, dtype=torch.float64) if bias == "vector" else None
    got = torch.ops.fused_rnn.native_linear(x, w, b)
    want = torch.einsum("mk,nk->mn", x, w) + (0 if b is None else b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * max(1, k))


def test_float64_gemms_run_the_panel_gemm_where_it_is_chosen():
    """A float64 decoder step's GEMMs (the projection, the recurrent product, and in backward the
    input, state and weight gradients) run fused_rnn's own GEMM, not ATen's, where build_info
    says so (512-bit kernels, a CPU whose MKL dgemm runs 256-bit code), and ATen's elsewhere."""
    cell = fused_rnn.GRUCell(40, 36, backend="native").double()
    x = torch.randn(9, 40, dtype=torch.float64, requires_grad=True)
    h = torch.randn(9, 36, dtype=torch.float64, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.autograd.grad(cell(x, h).sum(), [x, h, *cell.parameters()])
    names = {e.name for e in prof.events()}
    assert "fused_rnn::native_linear" in names
    aten_gemms = names & {"aten::mm", "aten::addmm", "aten::addmm_", "aten::matmul"}
    assert bool(aten_gemms) == (native.build_info()["cpu_gemm_float64"] == "aten"), names


@pytest.mark.skipif(REASON is not None or native.build_info()["cpu_gemm"] != "onednn",
                    reason="float32 GEMMs run through ATen here")
def test_onednn_operand_compacts_a_transposed_slice_row_by_row():
    """A transposed slice (strides (1, ld > rows)) reaches oneDNN as one row-by-row copy of its
    rows, not ATen's element-by-element copy into a transposed layout (a GRU weight gradient over
    the r and z columns of [R, 3H]: 17 against 3.5 ms at R = 16320, H = 256)."""
    x, w = _linear_operands(torch.float32, "sliced-transposed")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        got = torch.ops.fused_rnn.native_linear(x, w, None)
    copies = [e.input_shapes[0] for e in prof.events() if e.name == "aten::copy_"]
    assert sorted(copies) == [[69, 93], [69, 137]], copies  # x^T and w^T rows, never [137, 69]
    torch.testing.assert_close(got, (x.double() @ w.double().t()).float(), rtol=1e-5, atol=1e-5)


def test_native_linear_leaves_its_inputs_alone():
    x, w = _linear_operands(torch.float32, "contiguous")
    b = torch.randn(137, 93)
    copies = [t.clone() for t in (x, w, b)]
    torch.ops.fused_rnn.native_linear(x, w, b)
    assert all(torch.equal(t, c) for t, c in zip((x, w, b), copies))


def test_native_linear_rejects_bad_shapes():
    with pytest.raises(RuntimeError, match=r"fused_rnn::native_linear: x must be \[M, K\] and w \[N, K\]"):
        torch.ops.fused_rnn.native_linear(torch.zeros(3, 4), torch.zeros(5, 3), None)
    with pytest.raises(RuntimeError, match=r"b must have shape \[N\] = \[5\] or \[M, N\] = \[3, 5\], got \[4\]"):
        torch.ops.fused_rnn.native_linear(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(4))


def test_opcheck_linear_ops():
    x, w, b = _randn(5, 3).t(), _randn(4, 5), _randn(4)  # x a transposed view
    torch.library.opcheck(torch.ops.fused_rnn.native_linear.default, (x, w, b))
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    torch.library.opcheck(ops.linear, (*leaves, "native"))
    assert torch.autograd.gradcheck(lambda *v: ops.linear(*v, "native"), leaves)
    assert torch.autograd.gradgradcheck(lambda *v: ops.linear(*v, "native"), leaves)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_cell_projects_through_the_native_gemm(name):
    """The cells' input projection and its gradients run on fused_rnn::native_linear (oneDNN in
    float32, outputs above 1 MiB from the buffer pool), as the layers' do, not on ATen's addmm."""
    cell = getattr(fused_rnn, name)(7, 5, backend="native").double()
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = cell(x)
        torch.autograd.grad((out[0] if isinstance(out, tuple) else out).sum(), [x, cell.weight_ih])
    names = [e.name for e in prof.events()]
    assert names.count("fused_rnn::native_linear") >= 3  # the projection, its dx and its dW_ih
    assert "aten::addmm" not in names
