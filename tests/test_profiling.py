"""The gradient-path profiler against autograd through a torch.nn cell loop, where every per-step
hidden and cell state is a tensor whose gradient autograd keeps (retain_grad)."""

import pytest
import torch
from torch import nn

import fused_rnn
from fused_rnn import ops
from fused_rnn.parity import TOLERANCE
from fused_rnn.profiling import gradient_paths

T, B, I, H = 9, 3, 5, 7
CELLS = {"lstm": (fused_rnn.LSTM, nn.LSTMCell), "gru": (fused_rnn.GRU, nn.GRUCell), "rnn": (fused_rnn.RNN, nn.RNNCell)}


def autograd_paths(cell_name, layer, x, loss_fn):
    """Per-step norms of dL/dx[t], dL/dh[t], dL/dc[t] by a cell loop with retained gradients."""
    cell = CELLS[cell_name][1](I, H, dtype=torch.float64)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = x.detach().requires_grad_()
    h = c = torch.zeros(B, H, dtype=torch.float64)
    hs, cs = [], []
    for t in range(T):
        if cell_name == "lstm":
            h, c = cell(x[t], (h, c))
            c.retain_grad()
            cs.append(c)
        else:
            h = cell(x[t], h)
        h.retain_grad()
        hs.append(h)
    loss_fn(torch.stack(hs)).backward()
    norms = lambda ts: torch.stack([t.grad.norm() for t in ts])  # noqa: E731
    return x.grad.flatten(1).norm(dim=1), norms(hs), (norms(cs) if cs else None)


def backend_dtype(backend: str) -> torch.dtype:
    """float64 where the backend computes it (the triton kernels stop at float32)."""
    return torch.float32 if backend == "triton" else torch.float64


@pytest.mark.parametrize("backend", fused_rnn.available_backends("cpu"))
@pytest.mark.parametrize("cell_name", list(CELLS))
def test_gradient_norms_equal_autograd(cell_name, backend):
    """Every norm the profiler reads off the backend's backward equals autograd's through a float64
    cell loop, within the parity tolerance of the dtype the backend ran in."""
    torch.manual_seed(0)
    dtype = backend_dtype(backend)
    layer = CELLS[cell_name][0](I, H, dtype=torch.float64, backend=backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    weights = torch.randn(T, B, H, dtype=torch.float64)  # a loss that reaches every step
    loss_fn = lambda out: (out * weights.to(out.dtype)).sum()  # noqa: E731
    paths = gradient_paths(layer.to(dtype), x.to(dtype), loss_fn)
    grad_x, grad_h, grad_c = autograd_paths(cell_name, layer.double(), x, loss_fn)
    limit = TOLERANCE[dtype]  # per step, relative
    torch.testing.assert_close(paths.grad_norm_x.double(), grad_x, rtol=limit, atol=0)
    torch.testing.assert_close(paths.grad_norm_h.double(), grad_h, rtol=limit, atol=0)
    if cell_name == "lstm":
        torch.testing.assert_close(paths.grad_norm_c.double(), grad_c, rtol=limit, atol=0)
        assert paths.forget_gate_mean.shape == (T,)
        assert ((paths.forget_gate_mean > 0) & (paths.forget_gate_mean < 1)).all()
    else:
        assert paths.grad_norm_c is None and paths.forget_gate_mean is None
    assert (paths.update_gate_mean is not None) == (cell_name == "gru")


def test_default_loss_torch_module_and_batch_first():
    """Default loss = sum of the last step's output; a torch.nn module with batch_first gives the
    same paths as the fused module with the same weights."""
    torch.manual_seed(1)
    fused = fused_rnn.LSTM(I, H, dtype=torch.float64, backend="reference")
    reference = nn.LSTM(I, H, dtype=torch.float64, batch_first=True)
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    paths = gradient_paths(fused, x)
    _, grad_h, grad_c = autograd_paths("lstm", fused, x, lambda out: out[-1].sum())
    torch.testing.assert_close(paths.grad_norm_h, grad_h, rtol=1e-10, atol=0)
    torch.testing.assert_close(paths.grad_norm_c, grad_c, rtol=1e-10, atol=0)
    from_torch = gradient_paths(reference, x.transpose(0, 1))
    torch.testing.assert_close(from_torch.grad_norm_x, paths.grad_norm_x, rtol=1e-10, atol=0)
    torch.testing.assert_close(from_torch.grad_norm_c, paths.grad_norm_c, rtol=1e-10, atol=0)
    assert set(paths.to_dict()) == {"cell", "loss", "grad_norm_x", "grad_norm_h", "grad_norm_c", "forget_gate_mean"}


def test_projected_lstm_cell_path_matches_autograd():
    """proj_size: dL/dh is w.r.t. the projected state; dL/dc goes through W_hr."""
    torch.manual_seed(2)
    layer = fused_rnn.LSTM(I, H, proj_size=3, dtype=torch.float64, backend="reference")
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    paths = gradient_paths(layer, x)
    # autograd through an explicit projected loop
    w_ih, w_hh, b_ih, b_hh, w_hr = (p.detach() for p in layer.parameters())
    h, c = torch.zeros(B, 3, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    hs, cs = [], []
    for t in range(T):
        i, f, g, o = (x[t] @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)) @ w_hr.t()
        h.retain_grad(), c.retain_grad()
        hs.append(h), cs.append(c)
    hs[-1].sum().backward()
    torch.testing.assert_close(paths.grad_norm_h, torch.stack([v.grad.norm() for v in hs]), rtol=1e-10, atol=0)
    torch.testing.assert_close(paths.grad_norm_c, torch.stack([v.grad.norm() for v in cs]), rtol=1e-10, atol=0)


def test_bad_modules_and_inputs_are_refused():
    with pytest.raises(ValueError, match="num_layers=2"):
        gradient_paths(fused_rnn.LSTM(I, H, num_layers=2), torch.randn(T, B, I))
    with pytest.raises(ValueError, match="bidirectional=True"):
        gradient_paths(nn.GRU(I, H, bidirectional=True), torch.randn(T, B, I))
    with pytest.raises(TypeError, match="Linear"):
        gradient_paths(nn.Linear(I, H), torch.randn(T, B, I))
    with pytest.raises(ValueError, match=r"\[T, B, I\].*2-D"):
        gradient_paths(fused_rnn.RNN(I, H), torch.randn(B, I))


@pytest.mark.parametrize("backend", fused_rnn.available_backends("cpu"))
def test_profiled_forward_projects_as_the_module_does(backend):
    """The profiler's forward is the module's: a backend with its own CPU GEMM projects the input
    through it (the fused_rnn::linear op), the others through F.linear, in the profiler as in the
    module."""
    torch.manual_seed(2)
    layer = fused_rnn.LSTM(I, H, dtype=backend_dtype(backend), backend=backend)
    x = torch.randn(T, B, I, dtype=backend_dtype(backend))

    def linear_ops(run) -> int:
        with torch.profiler.profile() as profile:
            run()
        return sum(event.count for event in profile.key_averages() if event.key == "fused_rnn::linear")

    profiled, own = linear_ops(lambda: gradient_paths(layer, x)), linear_ops(lambda: layer(x))
    assert profiled >= 1 if ops.has_own_cpu_gemm(backend) else profiled == 0
    assert (profiled >= 1) == (own >= 1)
