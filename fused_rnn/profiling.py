"""The gradient-path profiler: how the gradient of a loss flows back through time in one layer.

`gradient_paths(module, inputs)` runs a single-layer, unidirectional LSTM / GRU / RNN (fused_rnn's,
with its backend, or torch.nn's, computed by the reference backend) through fused_rnn's ops and
reads, per time step t:

- ‖∂L/∂x[t]‖ (over batch and features), from autograd;
- ‖∂L/∂h[t]‖, the total derivative w.r.t. the hidden state, read off the backend's own backward:
  the backward op returns the gate gradients dxw [T, B, G*H], and
  ∂L/∂h[t] = ∂L/∂out[t] + (what flows back from step t+1), which for RNN and LSTM is
  dxw[t+1] @ W_hh (one GEMM over all steps) and for GRU adds the z-gate's direct path
  ∂L/∂h[t+1] * z[t+1] (a pointwise scan; its n-gate term uses dxw_n * r, both exact);
- for LSTM ‖∂L/∂c[t]‖, the cell-state path the forget gate controls, by the pointwise scan
  ∂L/∂c[t] = ∂L/∂c[t+1] * f[t+1] + ∂L/∂h[t] * o[t] * (1 - tanh²(c[t])) over the saved gates and
  cell states, and the mean forget-gate activation per step (GRU: the mean update gate z).

No reference backward runs: the extra cost over one forward and backward is one GEMM and a
pointwise pass over [T, B, H].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from . import functional, ops
from .backends import resolve_backend
from .functional import LayerWeights
from .reference import accumulation_dtype

Inputs = Union[Tensor, tuple]


@dataclass
class GradientPaths:
    """Per-step gradient norms of one layer; index t is the time step, the last step is nearest
    the default loss. Every field is a float64 CPU tensor [T], or None where the cell has no
    such path (c and the forget gate are LSTM's, the update gate GRU's)."""

    cell: str
    loss: float
    grad_norm_x: Tensor
    grad_norm_h: Tensor
    grad_norm_c: Optional[Tensor] = None
    forget_gate_mean: Optional[Tensor] = None
    update_gate_mean: Optional[Tensor] = None

    def to_dict(self) -> dict:
        """JSON-ready: {"cell": ..., "loss": ..., "grad_norm_x": [T floats], ...} (None fields left out)."""
        result: dict = {"cell": self.cell, "loss": self.loss}
        for name in ("grad_norm_x", "grad_norm_h", "grad_norm_c", "forget_gate_mean", "update_gate_mean"):
            value = getattr(self, name)
            if value is not None:
                result[name] = value.tolist()
        return result


def _cell_name(mode: str) -> str:
    return {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}[mode]


def _check_module(module: nn.Module) -> str:
    mode = getattr(module, "mode", None)
    if mode not in functional.GATES:
        raise TypeError(
            f"module must be an LSTM, GRU or RNN of fused_rnn or torch.nn, got {type(module).__name__}"
        )
    if module.num_layers != 1 or module.bidirectional:
        raise ValueError(
            "module must have one layer in one direction (num_layers=1, bidirectional=False), got "
            f"num_layers={module.num_layers}, bidirectional={module.bidirectional}"
        )
    return mode


def _split_inputs(module: nn.Module, inputs: Inputs) -> tuple[Tensor, Optional[tuple]]:
    """-> time-major x [T, B, I] and the initial states as given (or None)."""
    if isinstance(inputs, Tensor):
        x, hx = inputs, None
    else:
        x, hx = inputs[0], (inputs[1] if len(inputs) > 1 else None)
    if not isinstance(x, Tensor) or x.dim() != 3:
        layout = "[B, T, I]" if module.batch_first else "[T, B, I]"
        got = f"{x.dim()}-D" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"inputs must be a padded batched sequence {layout} (or (x, hx)), got {got}")
    return (x.transpose(0, 1) if module.batch_first else x), hx


def _layer_weights(module: nn.Module) -> LayerWeights:
    """The layer's parameters, detached: only gradients w.r.t. the inputs are wanted."""

    def get(name: str) -> Optional[Tensor]:
        value = getattr(module, name, None)
        return None if value is None else value.detach()

    return LayerWeights(get("weight_ih_l0"), get("weight_hh_l0"), get("bias_ih_l0"), get("bias_hh_l0"), get("weight_hr_l0"))


def _initial_states(mode: str, hx, x: Tensor, hidden: int, state: int) -> tuple[Tensor, Optional[Tensor]]:
    batch = x.shape[1]
    if hx is None:
        h0 = x.new_zeros(batch, state)
        return h0, (x.new_zeros(batch, hidden) if mode == "LSTM" else None)
    if mode == "LSTM":
        return hx[0][0].detach(), hx[1][0].detach()
    return hx[0].detach(), None


def _step_norms(tensor: Tensor) -> Tensor:
    """[T, ...] -> [T] float64 CPU: the 2-norm of each step."""
    return tensor.detach().flatten(1).double().norm(dim=1).cpu()


def gradient_paths(
    module: nn.Module, inputs: Inputs, loss_fn: Optional[Callable[[Tensor], Tensor]] = None
) -> GradientPaths:
    """Gradient flow through time of a single-layer LSTM / GRU / RNN (fused_rnn or torch.nn).

    inputs: x [T, B, I] ([B, T, I] with batch_first), or (x, hx) with torch.nn's initial states.
    loss_fn(output) -> scalar, output as the module returns it; default: the sum of the last time
    step's output. Returns per-step norms (see GradientPaths and the module docstring).
    """
    mode = _check_module(module)
    x, hx = _split_inputs(module, inputs)
    backend = resolve_backend(module.backend, x.device) if hasattr(module, "backend") else "reference"
    weights = _layer_weights(module)
    hidden = weights.w_hh.shape[0] // functional.GATES[mode]
    state = weights.w_hh.shape[1]
    h0, c0 = _initial_states(mode, hx, x, hidden, state)

    x = x.detach().requires_grad_()
    xw, b_hn = functional.input_projection(mode, x, weights, backend)
    saved: dict[str, Tensor] = {}
    if mode == "LSTM":
        hs, _, _, saved["cs"], saved["gates"] = ops.lstm_forward(xw, weights.w_hh, weights.w_hr, h0, c0, None, backend)
    elif mode == "GRU":
        hs, _, saved["gates"] = ops.gru_forward(xw, weights.w_hh, b_hn, h0, None, backend)
    else:
        hs, _ = ops.rnn_forward(xw, weights.w_hh, h0, None, mode == "RNN_RELU", backend)
    output = hs.transpose(0, 1) if module.batch_first else hs
    loss = loss_fn(output) if loss_fn is not None else (output[:, -1] if module.batch_first else output[-1]).sum()
    grad_x, dxw, grad_hs = torch.autograd.grad(loss, [x, xw, hs], allow_unused=True)
    grad_x = torch.zeros_like(x) if grad_x is None else grad_x
    dxw = torch.zeros_like(xw) if dxw is None else dxw
    grad_hs = torch.zeros_like(hs) if grad_hs is None else grad_hs

    acc = accumulation_dtype(hs.dtype)
    dxw, grad_hs, w_hh = dxw.to(acc), grad_hs.to(acc), weights.w_hh.to(acc)
    gates = saved["gates"].to(acc) if "gates" in saved else None
    if mode == "GRU":
        dh = _gru_hidden_grads(dxw, grad_hs, w_hh, gates)
    else:
        dh = grad_hs.clone()
        dh[:-1] += dxw[1:] @ w_hh
    paths = GradientPaths(
        cell=_cell_name(mode), loss=float(loss.detach()), grad_norm_x=_step_norms(grad_x), grad_norm_h=_step_norms(dh)
    )
    second_gate = None if gates is None else gates[..., hidden : 2 * hidden].mean(dim=(1, 2)).double().cpu()
    if mode == "LSTM":
        w_hr = None if weights.w_hr is None else weights.w_hr.to(acc)
        paths.grad_norm_c = _step_norms(_lstm_cell_grads(dh, gates, saved["cs"].to(acc), w_hr))
        paths.forget_gate_mean = second_gate  # LSTM gates are (i, f, g, o)
    elif mode == "GRU":
        paths.update_gate_mean = second_gate  # GRU gates are (r, z, n, W_hn h + b_hn)
    return paths


def _gru_hidden_grads(dxw: Tensor, grad_hs: Tensor, w_hh: Tensor, gates: Tensor) -> Tensor:
    """∂L/∂h[t] [T, B, H] of a GRU from its gate gradients dxw [T, B, 3H] and saved gates
    [T, B, 4H] = (r, z, n, W_hn h + b_hn): dh[t] = grad_hs[t] + dh[t+1] * z[t+1] + A[t+1] with
    A[s] = [dxw_r, dxw_z, dxw_n * r][s] @ W_hh."""
    hidden = grad_hs.shape[2]
    r, z = gates[..., :hidden], gates[..., hidden : 2 * hidden]
    hidden_side = torch.cat([dxw[..., : 2 * hidden], dxw[..., 2 * hidden :] * r], dim=2)
    through_weights = hidden_side[1:] @ w_hh  # [T-1, B, H]: A[1..T-1]
    dh = grad_hs.clone()
    for t in range(dh.shape[0] - 2, -1, -1):
        dh[t] += dh[t + 1] * z[t + 1] + through_weights[t]
    return dh


def _lstm_cell_grads(dh: Tensor, gates: Tensor, cs: Tensor, w_hr: Optional[Tensor]) -> Tensor:
    """∂L/∂c[t] [T, B, H] of an LSTM from ∂L/∂h[t] [T, B, P], saved gates [T, B, 4H] = (i, f, g, o)
    and cell states cs [T, B, H] (projection W_hr [P, H] or None)."""
    hidden = cs.shape[2]
    f, o = gates[..., hidden : 2 * hidden], gates[..., 3 * hidden :]
    d_unprojected = dh if w_hr is None else dh @ w_hr
    tanh_c = torch.tanh(cs)
    through_h = d_unprojected * o * (1 - tanh_c * tanh_c)
    dc = torch.empty_like(cs)
    carry = torch.zeros_like(cs[0])
    for t in range(cs.shape[0] - 1, -1, -1):
        carry = carry + through_h[t]
        dc[t] = carry
        carry = carry * f[t]
    return dc


def plot_gradient_paths(paths: dict[str, GradientPaths], path: str) -> None:
    """Log-scale norms against distance from the loss (T-1-t): ‖∂L/∂x‖ per cell on the left,
    ‖∂L/∂h‖ per cell and LSTM's ‖∂L/∂c‖ on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, p in paths.items():
        distance = range(len(p.grad_norm_x) - 1, -1, -1)
        left.plot(distance, p.grad_norm_x.numpy(), label=name)
        (line,) = right.plot(distance, p.grad_norm_h.numpy(), label=f"{name} ‖∂L/∂h‖")
        if p.grad_norm_c is not None:
            right.plot(distance, p.grad_norm_c.numpy(), linestyle="--", color=line.get_color(), label=f"{name} ‖∂L/∂c‖")
    for axis, title in ((left, "‖∂L/∂x[t]‖"), (right, "‖∂L/∂h[t]‖, ‖∂L/∂c[t]‖")):
        axis.set_yscale("log")
        axis.set_xlabel("distance from the loss (steps)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
