"""FLOP counts for achieved TFLOP/s.

Recurrence (one layer, G gates): input GEMM 2*T*B*I*G*H, recurrent GEMMs 2*T*B*H*G*H, pointwise
work per hidden unit and step as below (an add, a multiply or an activation counts one); a packed
batch counts its rows' real lengths instead of T*B, a stack of layers each layer.
Attention: projections, scores, softmax (5 per score) and the weighted sum of values.
Forward+backward counts three times the forward: each GEMM has two GEMMs in backward (input and
weight gradients) and the pointwise backward is about twice its forward.
"""

from __future__ import annotations

from .shapes import ATTENTION_SCORES, GATES, AttentionShape, PackedShape, RecurrentShape, Shape
from .workloads import packed_lengths

# Pointwise operations per hidden unit and step, bias adds and the recurrent add included.
POINTWISE = {
    "rnn": 2,  # pre-activation add, tanh
    "lstm": 13,  # 4 adds, 3 sigmoids, 2 tanh, c = f*c + i*g (3), h = o*tanh(c) (1)
    "gru": 12,  # 3 adds, b_hn add, r*(.), 2 sigmoids, tanh, h = (1-z)*n + z*h (4)
}
ADDITIVE_SCORE = 4  # add, tanh, multiply by v, accumulate: per score and attention unit
SOFTMAX = 5  # max, subtract, exp, sum, divide: per score
BACKWARD_FACTOR = 3


def forward_flops(op: str, shape: Shape) -> float:
    if isinstance(shape, RecurrentShape):
        t, b, i, h = shape.steps, shape.batch, shape.input_size, shape.hidden
        g = GATES[op]
        # A packed batch costs its rows' real lengths; layers after the first take inputs of size H.
        row_steps = float(packed_lengths(shape).sum()) if isinstance(shape, PackedShape) else float(t * b)
        per_row_step = 2.0 * g * h * (i + h) + float(POINTWISE[op]) * h
        per_row_step += (getattr(shape, "layers", 1) - 1) * (2.0 * g * h * (2 * h) + float(POINTWISE[op]) * h)
        return row_steps * per_row_step
    assert isinstance(shape, AttentionShape)
    b, tq, tk, d, a = shape.batch, shape.query_steps, shape.key_steps, shape.dim, shape.attn
    scores = float(b) * tq * tk
    score = ATTENTION_SCORES[op]
    if score == "additive":
        projections = 2.0 * b * (tq + tk) * d * a
        scoring = ADDITIVE_SCORE * scores * a
    else:
        projections = 2.0 * b * tq * d * d if score == "general" else 0.0
        scoring = 2.0 * scores * d
    return projections + scoring + SOFTMAX * scores + 2.0 * scores * d


def flops(op: str, shape: Shape, mode: str) -> float:
    """FLOPs of one call of `op` at `shape` in `mode` ("forward" or "forward+backward")."""
    factor = 1 if mode == "forward" else BACKWARD_FACTOR
    return factor * forward_flops(op, shape)
