"""Ground truth for every recurrence op: plain PyTorch loops over time, any dtype (float64 included).

Every backend implements these functions with the same signatures and the same saved tensors.
Shapes: T time steps, B batch rows, H hidden units, P = proj_size or H (the size of the hidden state
LSTM feeds back), G gates (RNN 1, GRU 3, LSTM 4).

Conventions shared by all backends:
- `xw [T, B, G*H]` is the precomputed input projection `x @ W_ih^T` plus every bias that sits outside
  the recurrence (LSTM/RNN: b_ih + b_hh; GRU: b_ih + [b_hr, b_hz, 0]). GRU's b_hn stays inside
  `r * (W_hn h + b_hn)` and is passed separately.
- `lengths [B]` (int64, optional): row b is live for t < lengths[b]. Past its length a row stops
  updating (its final state is the state at step lengths[b]-1) and emits zeros in every per-step
  output (hidden states, saved gates, saved cell states) and in every per-step gradient.
- Half-precision inputs are computed with float32 gate math and a float32 cell state; per-step
  outputs are stored in the input dtype, LSTM cell states `cs` in the accumulation dtype.

Each backward is written out step by step (it is the specification the fused backward kernels are
tested against); `tests/test_reference.py` checks it against autograd through the forward.
The weight gradients are not part of the backward ops: they are single GEMMs over all steps, done by
`fused_rnn.ops` for every backend (dW_hh = sum_t dgates_t^T h_{t-1}).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype gate math and cell states are computed in for inputs of `dtype`."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def live_rows(lengths: Optional[Tensor], t: int) -> Optional[Tensor]:
    """[B, 1] bool mask of the rows still running at step t, or None when every row runs."""
    if lengths is None:
        return None
    return (lengths > t).unsqueeze(1)


def keep_live(mask: Optional[Tensor], new: Tensor, old: Tensor) -> Tensor:
    """`new` on live rows, `old` elsewhere."""
    return new if mask is None else torch.where(mask, new, old)


def zero_dead(mask: Optional[Tensor], value: Tensor) -> Tensor:
    """`value` on live rows, zero elsewhere."""
    return value if mask is None else torch.where(mask, value, torch.zeros_like(value))


def _previous_hidden(hs: Tensor, h0: Tensor, t: int) -> Tensor:
    """h[t-1]: the state step t starts from ([B, P])."""
    return hs[t - 1] if t > 0 else h0


# ----------------------------------------------------------------------------------------------
# Vanilla RNN: h[t] = act(xw[t] + h[t-1] @ W_hh^T), act = tanh or relu.
# ----------------------------------------------------------------------------------------------


def rnn_forward(
    xw: Tensor, w_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], relu: bool
) -> tuple[Tensor, Tensor]:
    """xw [T, B, H], w_hh [H, H], h0 [B, H], lengths [B] -> hs [T, B, H], h_n [B, H].

    Saved for backward: hs (the activation's derivative is a function of its output).
    """
    acc = accumulation_dtype(xw.dtype)
    w = w_hh.to(acc)
    h = h0.to(acc)
    outputs = []
    for t in range(xw.shape[0]):
        pre = xw[t].to(acc) + h.to(xw.dtype).to(acc) @ w.t()
        h_new = torch.relu(pre) if relu else torch.tanh(pre)
        live = live_rows(lengths, t)
        outputs.append(zero_dead(live, h_new))
        h = keep_live(live, h_new, h)
    return torch.stack(outputs).to(xw.dtype), h.to(xw.dtype)


def rnn_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """grad_hs [T, B, H], grad_h_n [B, H] -> dxw [T, B, H], dh0 [B, H]."""
    acc = accumulation_dtype(hs.dtype)
    w = w_hh.to(acc)
    dh = grad_h_n.to(acc)
    dxw = [None] * hs.shape[0]
    for t in reversed(range(hs.shape[0])):
        live = live_rows(lengths, t)
        h = hs[t].to(acc)
        g = dh + zero_dead(live, grad_hs[t].to(acc))
        dpre = g * (h > 0).to(acc) if relu else g * (1 - h * h)
        dpre = zero_dead(live, dpre)
        dxw[t] = dpre
        dh = keep_live(live, dpre @ w, dh)
    return torch.stack(dxw).to(hs.dtype), dh.to(h0.dtype)


# ----------------------------------------------------------------------------------------------
# LSTM (torch.nn gate order i, f, g, o), optional projection h = (o * tanh(c)) @ W_hr^T.
# ----------------------------------------------------------------------------------------------


def lstm_forward(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """xw [T, B, 4H], w_hh [4H, P], w_hr [P, H] or None, h0 [B, P], c0 [B, H]
    -> hs [T, B, P], h_n [B, P], c_n [B, H], cs [T, B, H], gates [T, B, 4H].

    Saved for backward: `gates`, the activated i, f, g, o (input dtype), and `cs`, the cell state
    after each step (accumulation dtype), besides hs: per step B*(4H*e + 4H) bytes in float32/half
    (e = element size of the input dtype).
    """
    acc = accumulation_dtype(xw.dtype)
    w = w_hh.to(acc)
    w_proj = None if w_hr is None else w_hr.to(acc)
    h, c = h0.to(acc), c0.to(acc)
    hs, cs, gates = [], [], []
    for t in range(xw.shape[0]):
        pre = xw[t].to(acc) + h.to(xw.dtype).to(acc) @ w.t()
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        if w_proj is not None:
            h_new = h_new @ w_proj.t()
        live = live_rows(lengths, t)
        hs.append(zero_dead(live, h_new))
        cs.append(zero_dead(live, c_new))
        gates.append(zero_dead(live, torch.cat([i, f, g, o], dim=1)))
        h = keep_live(live, h_new, h)
        c = keep_live(live, c_new, c)
    return (
        torch.stack(hs).to(xw.dtype),
        h.to(xw.dtype),
        c.to(xw.dtype),
        torch.stack(cs),
        torch.stack(gates).to(xw.dtype),
    )


def lstm_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad_hs [T, B, P], grad_h_n [B, P], grad_c_n [B, H]
    -> dxw [T, B, 4H], dh0 [B, P], dc0 [B, H], dw_hr [P, H] (shape [0] without projection).
    """
    acc = accumulation_dtype(hs.dtype)
    w = w_hh.to(acc)
    w_proj = None if w_hr is None else w_hr.to(acc)
    dh, dc = grad_h_n.to(acc), grad_c_n.to(acc)
    steps = hs.shape[0]
    dxw = [None] * steps
    dh_out = [None] * steps  # gradient reaching each step's (projected) output, for dw_hr
    for t in reversed(range(steps)):
        live = live_rows(lengths, t)
        i, f, g, o = gates[t].to(acc).chunk(4, dim=1)
        c = cs[t]
        c_prev = cs[t - 1] if t > 0 else c0.to(acc)
        g_h = zero_dead(live, dh + zero_dead(live, grad_hs[t].to(acc)))
        dh_out[t] = g_h
        d_unprojected = g_h if w_proj is None else g_h @ w_proj
        tanh_c = torch.tanh(c)
        d_c = dc + d_unprojected * o * (1 - tanh_c * tanh_c)
        d_pre = torch.cat(
            [
                d_c * g * i * (1 - i),
                d_c * c_prev * f * (1 - f),
                d_c * i * (1 - g * g),
                d_unprojected * tanh_c * o * (1 - o),
            ],
            dim=1,
        )
        d_pre = zero_dead(live, d_pre)
        dxw[t] = d_pre
        dh = keep_live(live, d_pre @ w, dh)
        dc = keep_live(live, d_c * f, dc)
    if w_proj is None:
        dw_hr = grad_hs.new_zeros(0)
    else:
        i, f, g, o = gates.to(acc).chunk(4, dim=2)
        unprojected = o * torch.tanh(cs)  # [T, B, H], zero on dead rows
        dw_hr = torch.einsum("tbp,tbh->ph", torch.stack(dh_out), unprojected).to(w_hr.dtype)
    return torch.stack(dxw).to(hs.dtype), dh.to(h0.dtype), dc.to(c0.dtype), dw_hr


# ----------------------------------------------------------------------------------------------
# GRU (torch.nn gate order r, z, n):
#   r = sigmoid(xw_r + W_hr h), z = sigmoid(xw_z + W_hz h), n = tanh(xw_n + r * (W_hn h + b_hn)),
#   h' = (1 - z) * n + z * h.
# ----------------------------------------------------------------------------------------------


def gru_forward(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """xw [T, B, 3H], w_hh [3H, H], b_hn [H] or None, h0 [B, H]
    -> hs [T, B, H], h_n [B, H], gates [T, B, 4H].

    Saved for backward: `gates` = (r, z, n, W_hn h[t-1] + b_hn) in the input dtype besides hs:
    per step B*4H*e bytes.
    """
    acc = accumulation_dtype(xw.dtype)
    w = w_hh.to(acc)
    h = h0.to(acc)
    hs, gates = [], []
    for t in range(xw.shape[0]):
        x_r, x_z, x_n = xw[t].to(acc).chunk(3, dim=1)
        h_r, h_z, h_n = (h.to(xw.dtype).to(acc) @ w.t()).chunk(3, dim=1)
        if b_hn is not None:
            h_n = h_n + b_hn.to(acc)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h_new = (1 - z) * n + z * h.to(xw.dtype).to(acc)
        live = live_rows(lengths, t)
        hs.append(zero_dead(live, h_new))
        gates.append(zero_dead(live, torch.cat([r, z, n, h_n], dim=1)))
        h = keep_live(live, h_new, h)
    return torch.stack(hs).to(xw.dtype), h.to(xw.dtype), torch.stack(gates).to(xw.dtype)


def gru_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """grad_hs [T, B, H], grad_h_n [B, H] -> dxw [T, B, 3H], d_hn [T, B, H], dh0 [B, H].

    `d_hn` is the gradient of W_hn h[t-1] + b_hn, which differs from the n gate's input gradient
    (it is scaled by r); the hidden-side gate gradients are [dxw_r, dxw_z, d_hn].
    """
    acc = accumulation_dtype(hs.dtype)
    w = w_hh.to(acc)
    dh = grad_h_n.to(acc)
    steps = hs.shape[0]
    dxw = [None] * steps
    d_hn_all = [None] * steps
    for t in reversed(range(steps)):
        live = live_rows(lengths, t)
        r, z, n, h_n = gates[t].to(acc).chunk(4, dim=1)
        h_prev = _previous_hidden(hs, h0, t).to(acc)
        g = dh + zero_dead(live, grad_hs[t].to(acc))
        d_n_pre = g * (1 - z) * (1 - n * n)
        d_z_pre = g * (h_prev - n) * z * (1 - z)
        d_r_pre = d_n_pre * h_n * r * (1 - r)
        d_hn = zero_dead(live, d_n_pre * r)
        d_x = zero_dead(live, torch.cat([d_r_pre, d_z_pre, d_n_pre], dim=1))
        dxw[t] = d_x
        d_hn_all[t] = d_hn
        d_hidden_gates = torch.cat([d_x[:, : 2 * d_hn.shape[1]], d_hn], dim=1)
        dh = keep_live(live, g * z + d_hidden_gates @ w, dh)
    return (
        torch.stack(dxw).to(hs.dtype),
        torch.stack(d_hn_all).to(hs.dtype),
        dh.to(h0.dtype),
    )


def unavailable_reason(device: torch.device) -> Optional[str]:
    """The reference runs on every device."""
    return None


# ----------------------------------------------------------------------------------------------
# Attention scoring: scores -> mask by key lengths -> softmax -> weighted sum of values.
#
# Shapes: B batch rows, Tq queries, Tk keys, A attention size (additive), D query/key feature size
# (dot), Dv value size. The projections (W_q q + bias, W_k k, q W for "general") are GEMMs done
# through autograd outside these functions; the functions take the projected tensors.
#
#     additive:  score[b, i, j] = v . tanh(pq[b, i] + pk[b, j])        pq [B, Tq, A], pk [B, Tk, A]
#     dot:       score[b, i, j] = scale * (q[b, i] . k[b, j])           q [B, Tq, D],  k [B, Tk, D]
#                (dot: scale 1; scaled_dot: 1/sqrt(D); general: q = query @ W, scale 1)
#
# Shared conventions (every backend):
# - `key_lengths [B]` (int64, optional, values in 1..Tk): keys j >= key_lengths[b] get zero weight.
# - Scores, the softmax and the log-sum-exp are computed in the accumulation dtype (float32 for
#   half inputs); the weights are rounded to the input dtype before they multiply the values (as an
#   eager computation in that dtype does), and so is the score gradient before its GEMMs.
# - Forward returns (context [B, Tq, Dv], lse [B, Tq] in the accumulation dtype, weights [B, Tq, Tk]
#   in the input dtype, or an empty [0] tensor when need_weights is False).
# - Backward recomputes the weights from lse; `grad_weights` and `weights` are None unless the
#   forward was asked for weights and they received a gradient.
# This reference materialises [B, Tq, Tk] and, for the additive score, [B, Tq, Tk, A]; no other
# backend may. Its backward is written out (`tests/test_attention_reference.py` checks it against
# autograd through the forward).
# ----------------------------------------------------------------------------------------------


def _key_mask(key_lengths: Optional[Tensor], keys: int, device: torch.device) -> Optional[Tensor]:
    """[B, 1, Tk] bool, True where key j lies within row b's length; None when every key counts."""
    if key_lengths is None:
        return None
    return (torch.arange(keys, device=device) < key_lengths.unsqueeze(1)).unsqueeze(1)


def _softmax_with_lse(scores: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """scores [B, Tq, Tk] -> (weights, lse [B, Tq]), masked keys at exactly zero weight."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse.unsqueeze(-1)), lse


def _weighted_values(weights: Tensor, values: Tensor, acc: torch.dtype) -> Tensor:
    """context [B, Tq, Dv] = weights (rounded to the values' dtype) @ values."""
    return weights.to(values.dtype).to(acc) @ values.to(acc)


def _attention_outputs(
    scores: Tensor, values: Tensor, key_lengths: Optional[Tensor], need_weights: bool
) -> tuple[Tensor, Tensor, Tensor]:
    acc = scores.dtype
    weights, lse = _softmax_with_lse(scores, _key_mask(key_lengths, scores.shape[-1], scores.device))
    context = _weighted_values(weights, values, acc).to(values.dtype)
    stored = weights.to(values.dtype) if need_weights else values.new_empty(0)
    return context, lse, stored


def attention_softmax_delta(
    grad_context: Tensor, context: Tensor, grad_weights: Optional[Tensor], weights: Optional[Tensor]
) -> Tensor:
    """delta [B, Tq] = sum_j P_ij dP_ij, the softmax backward's row term, in the accumulation dtype:
    rowsum(grad_context * context) (+ rowsum(grad_weights * weights) when weights got a gradient)."""
    acc = accumulation_dtype(context.dtype)
    delta = (grad_context.to(acc) * context.to(acc)).sum(-1)
    if grad_weights is not None:
        delta = delta + (grad_weights.to(acc) * weights.to(acc)).sum(-1)
    return delta


def _score_gradient(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    scores: Tensor,
    weights_saved: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """-> (d_scores [B, Tq, Tk] in the accumulation dtype, d_values [B, Tk, Dv]) from recomputed
    weights P = exp(scores - lse): dP = grad_context @ values^T (+ grad_weights),
    d_scores = P * (dP - delta), d_values = P^T @ grad_context."""
    acc = scores.dtype
    mask = _key_mask(key_lengths, scores.shape[-1], scores.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.exp(scores - lse.to(acc).unsqueeze(-1))
    d_values = weights.to(values.dtype).to(acc).transpose(1, 2) @ grad_context.to(acc)
    d_weights = grad_context.to(acc) @ values.to(acc).transpose(1, 2)
    if grad_weights is not None:
        d_weights = d_weights + grad_weights.to(acc)
    delta = attention_softmax_delta(grad_context, context, grad_weights, weights_saved)
    d_scores = weights * (d_weights - delta.unsqueeze(-1))
    # Rounded like the half-precision tensor an eager computation would hand to the next GEMM.
    return d_scores.to(values.dtype).to(acc), d_values.to(values.dtype)


def additive_scores(pq: Tensor, pk: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """-> (scores [B, Tq, Tk], tanh(pq_i + pk_j) [B, Tq, Tk, A]), in the accumulation dtype."""
    acc = accumulation_dtype(pq.dtype)
    hidden = torch.tanh(pq.to(acc).unsqueeze(2) + pk.to(acc).unsqueeze(1))
    return hidden @ v.to(acc), hidden


def additive_attention_forward(
    pq: Tensor, pk: Tensor, v: Tensor, values: Tensor, key_lengths: Optional[Tensor], need_weights: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """pq [B, Tq, A] (= W_q q + bias), pk [B, Tk, A] (= W_k k), v [A], values [B, Tk, Dv],
    key_lengths [B] -> context [B, Tq, Dv], lse [B, Tq], weights [B, Tq, Tk] (or [0])."""
    scores, _ = additive_scores(pq, pk, v)
    return _attention_outputs(scores, values, key_lengths, need_weights)


def additive_attention_backward(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    pq: Tensor,
    pk: Tensor,
    v: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    weights: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad_context [B, Tq, Dv], grad_weights [B, Tq, Tk] or None, the forward's inputs, context,
    lse and weights (or None) -> d_pq [B, Tq, A], d_pk [B, Tk, A], d_v [A], d_values [B, Tk, Dv].

    With h = tanh(pq_i + pk_j): d_pq_i = sum_j dS_ij v (1 - h^2), d_pk_j = sum_i dS_ij v (1 - h^2),
    d_v = sum_ij dS_ij h.
    """
    scores, hidden = additive_scores(pq, pk, v)
    d_scores, d_values = _score_gradient(
        grad_context, grad_weights, values, key_lengths, context, lse, scores, weights
    )
    acc = scores.dtype
    d_pre = d_scores.unsqueeze(-1) * v.to(acc) * (1 - hidden * hidden)  # [B, Tq, Tk, A]
    d_v = torch.einsum("bij,bija->a", d_scores, hidden)
    return d_pre.sum(2).to(pq.dtype), d_pre.sum(1).to(pk.dtype), d_v.to(v.dtype), d_values


def dot_scores(query: Tensor, keys: Tensor, scale: float) -> Tensor:
    """scores [B, Tq, Tk] = scale * query @ keys^T, in the accumulation dtype."""
    acc = accumulation_dtype(query.dtype)
    return (query.to(acc) @ keys.to(acc).transpose(1, 2)) * scale


def dot_attention_forward(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    scale: float,
    need_weights: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """query [B, Tq, D], keys [B, Tk, D], values [B, Tk, Dv], key_lengths [B], scale ->
    context [B, Tq, Dv], lse [B, Tq], weights [B, Tq, Tk] (or [0])."""
    scores = dot_scores(query, keys, scale)
    return _attention_outputs(scores, values, key_lengths, need_weights)


def dot_attention_backward(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    weights: Optional[Tensor],
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> d_query [B, Tq, D], d_keys [B, Tk, D], d_values [B, Tk, Dv]
    (d_query = scale dS @ keys, d_keys = scale dS^T @ query)."""
    scores = dot_scores(query, keys, scale)
    d_scores, d_values = _score_gradient(
        grad_context, grad_weights, values, key_lengths, context, lse, scores, weights
    )
    acc = scores.dtype
    d_query = (d_scores @ keys.to(acc)) * scale
    d_keys = (d_scores.transpose(1, 2) @ query.to(acc)) * scale
    return d_query.to(query.dtype), d_keys.to(keys.dtype), d_values
