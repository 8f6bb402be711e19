"""Per-step gradient norms of a one-layer fused_rnn RNN/LSTM/GRU, measured with autograd.

The layer's weights are stepped through the matching fused_rnn cell, one time step at a time, with
every hidden (and cell) state kept in the graph, so autograd gives ∂L/∂h[t] and ∂L/∂c[t] for each t
as well as ∂L/∂x[t].
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

import fused_rnn


def _cell_sharing_weights(layer: nn.Module) -> nn.Module:
    """The fused_rnn cell of `layer`'s kind whose parameters are layer 0's parameters (not copies)."""
    if isinstance(layer, fused_rnn.LSTM):
        cell = fused_rnn.LSTMCell(layer.input_size, layer.hidden_size, backend=layer.backend)
    elif isinstance(layer, fused_rnn.GRU):
        cell = fused_rnn.GRUCell(layer.input_size, layer.hidden_size, backend=layer.backend)
    else:
        cell = fused_rnn.RNNCell(layer.input_size, layer.hidden_size, nonlinearity=layer.nonlinearity,
                                 backend=layer.backend)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(cell, name, getattr(layer, name + "_l0"))
    return cell.to(layer.weight_ih_l0.device)


def _norm(grad) -> float:
    """‖grad‖₂; a state the loss does not depend on (the last cell state) has no gradient: 0."""
    return 0.0 if grad is None else grad.norm().item()


def measure_paths(layer: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> dict[str, list[float]]:
    """x [T, B, I], loss_fn(output [T, B, H]) -> scalar loss. Returns per time step t:
    grad_norm_x ‖∂L/∂x[t]‖₂ over batch and features, grad_norm_h ‖∂L/∂h[t]‖₂, and for an LSTM
    grad_norm_c ‖∂L/∂c[t]‖₂ and forget_gate, the mean forget-gate activation at step t."""
    if layer.num_layers != 1 or layer.bidirectional or layer.batch_first:
        raise ValueError("measure_paths expects a one-layer, one-direction, time-major layer")
    cell = _cell_sharing_weights(layer)
    lstm = isinstance(layer, fused_rnn.LSTM)
    hidden = layer.hidden_size
    x = x.detach().requires_grad_(True)
    h = x.new_zeros(x.shape[1], hidden)
    c = torch.zeros_like(h)
    hs, cs, forget = [], [], []
    for t in range(x.shape[0]):
        if lstm:
            with torch.no_grad():
                f_pre = (x[t] @ cell.weight_ih[hidden:2 * hidden].T + cell.bias_ih[hidden:2 * hidden]
                         + h @ cell.weight_hh[hidden:2 * hidden].T + cell.bias_hh[hidden:2 * hidden])
                forget.append(torch.sigmoid(f_pre).mean().item())
            h, c = cell(x[t], (h, c))
            c.retain_grad()
            cs.append(c)
        else:
            h = cell(x[t], h)
        h.retain_grad()
        hs.append(h)
    loss_fn(torch.stack(hs)).backward()
    norms = {"grad_norm_x": [x.grad[t].norm().item() for t in range(x.shape[0])]}
    norms["grad_norm_h"] = [_norm(s.grad) for s in hs]
    if lstm:
        norms["grad_norm_c"] = [_norm(s.grad) for s in cs]
        norms["forget_gate"] = forget
    return norms
