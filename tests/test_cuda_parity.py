"""CUDA parity of the recurrence on every kernel backend (triton, native) in every dtype (float32,
float16, bfloat16, float64).

- The ops (fused_rnn.parity): forward and backward of every cell, proj_size included, at odd sizes
  (T = 1, 7, 33, 63; H = 1, 33, 100, 257), with and without per-row lengths, against the float64
  reference; the inference ops of LSTM and GRU likewise. Every fresh allocation is NaN.
- The modules against torch.nn with the same weights: layers, directions, packed input,
  batch_first, projections; outputs, final states and the gradients of the input, the initial
  states and every parameter, against torch.nn in float64.
- Attention in float64 (its other dtypes on CUDA are in tests/test_attention.py).

Tolerances are DESIGN.md's (fused_rnn.parity): float64 1e-10, float32 1e-5 (5e-4 with tf32),
float16/bfloat16 twice the error of torch.nn doing the same in that dtype on the same GPU. A
backend that does not support a dtype must refuse it with the error listed in REFUSED.
"""

from __future__ import annotations

import re
from typing import Optional

import pytest
import torch
from torch import Tensor, nn

import fused_rnn
from fused_rnn import attention_ops, ops
from fused_rnn.attention_parity import SCORES, module_errors
from fused_rnn.attention_parity import Case as AttentionCase
from fused_rnn.attention_parity import tolerance as attention_tolerance
from fused_rnn.backends import unavailable_reason
from fused_rnn.parity import (
    HALF_FACTOR,
    TF32_TOLERANCE,
    TOLERANCE,
    Case,
    case_errors,
    make_inputs,
    module_outputs_and_grads,
    op_arguments,
    poisoned_allocations,
    relative_error,
    run_op,
    tolerance,
)

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
BACKENDS = ("triton", "native")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# What a backend raises for a dtype it does not compute in, instead of a result.
REFUSED = {("triton", torch.float64): "xw of dtype float32, float16 or bfloat16, got torch.float64"}

OP_CASES = [
    Case("rnn_tanh", 63, 5, 33, lengths=True),
    Case("rnn_relu", 7, 1, 100),
    Case("lstm", 1, 5, 1),
    Case("lstm", 63, 5, 100, lengths=True),
    Case("lstm", 33, 40, 257, lengths=True, seed=1),
    Case("lstm_proj", 7, 5, 33, proj=20, lengths=True),
    Case("gru", 7, 5, 100, lengths=True),
    Case("gru", 63, 1, 1, lengths=True),
]
INFERENCE_CASES = [
    Case("lstm", 7, 5, 33, lengths=True),
    Case("lstm_proj", 7, 5, 100, proj=33, lengths=True),
    Case("gru", 63, 5, 33, lengths=True),
]

STEPS, BATCH, INPUT = 7, 5, 3
LENGTHS = torch.tensor([7, 2, 5, 1, 6])
# (fused_rnn class, torch.nn class, constructor keywords, packed input)
MODULES = {
    "lstm-2layers-bidirectional-packed": (fused_rnn.LSTM, nn.LSTM, {"hidden_size": 33, "num_layers": 2, "bidirectional": True}, True),
    "lstm-proj-bidirectional-packed-batch-first": (
        fused_rnn.LSTM, nn.LSTM, {"hidden_size": 20, "proj_size": 7, "bidirectional": True, "batch_first": True}, True,
    ),
    "gru-2layers-bidirectional-packed": (fused_rnn.GRU, nn.GRU, {"hidden_size": 100, "num_layers": 2, "bidirectional": True}, True),
    "rnn-relu-2layers-batch-first": (
        fused_rnn.RNN, nn.RNN, {"hidden_size": 17, "num_layers": 2, "nonlinearity": "relu", "batch_first": True}, False,
    ),
    "rnn-tanh-bidirectional-packed": (fused_rnn.RNN, nn.RNN, {"hidden_size": 1, "bidirectional": True}, True),
}

ATTENTION_CASES = [
    AttentionCase(batch=3, tq=0, tk=13, dq=7, dk=7, dv=3, attn=9, lengths=True),
    AttentionCase(batch=2, tq=37, tk=70, dq=11, dk=11, dv=5, attn=19, lengths=True, seed=2),
]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require(backend: str) -> None:
    reason = unavailable_reason(backend, CUDA)
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable on CUDA: {reason}")


def refuses(backend: str, dtype: torch.dtype, call) -> bool:
    """When `backend` does not compute in `dtype` (REFUSED): assert that call() raises its error,
    and return True."""
    message = REFUSED.get((backend, dtype))
    if message is None:
        return False
    with pytest.raises(RuntimeError, match=re.escape(message)):
        call()
    return True


def assert_within(errors: dict[str, float], limit: float, what: str) -> None:
    bad = {name: error for name, error in errors.items() if not error <= limit}  # NaN never passes
    assert not bad, f"{what}: errors above {limit:.2e}: {bad}"


def on_cuda(inputs: dict[str, Optional[Tensor]], dtype: torch.dtype) -> dict[str, Optional[Tensor]]:
    return {
        name: None if t is None else (t.to(CUDA) if name == "lengths" else t.to(CUDA, dtype))
        for name, t in inputs.items()
    }


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", OP_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_parity_with_float64_reference(backend, dtype, case):
    require(backend)
    if refuses(backend, dtype, lambda: case_errors(case, backend, dtype, CUDA)):
        return
    with poisoned_allocations():
        errors = case_errors(case, backend, dtype, CUDA)
    assert_within(errors, tolerance(case, dtype, CUDA), f"{backend} {dtype_id(dtype)} {case}")


@pytest.mark.parametrize("case", INFERENCE_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_op_parity_with_float64_reference(backend, dtype, case):
    """hs, h_n (and c_n) of the inference op, which writes no saved tensor, against the reference
    forward on the same rounded inputs."""
    require(backend)
    inputs = make_inputs(case, torch.Generator().manual_seed(case.seed))
    family, args = op_arguments(case.cell, on_cuda(inputs, dtype))
    inference = getattr(ops, f"{family}_inference")
    if refuses(backend, dtype, lambda: inference(*args, backend)):
        return
    rounded = {name: t if t is None or name == "lengths" else t.to(dtype).double() for name, t in inputs.items()}
    expected = run_op(case.cell, "reference", rounded)
    with poisoned_allocations():
        outputs = inference(*args, backend)
    assert len(outputs) == len(expected)
    errors = {f"out{i}": relative_error(o, e) for i, (o, e) in enumerate(zip(outputs, expected))}
    assert_within(errors, tolerance(case, dtype, CUDA), f"{backend} {dtype_id(dtype)} {case} inference")


# ---------------------------------------------------------------------------------------------
# The modules against torch.nn
# ---------------------------------------------------------------------------------------------


def _module_run(
    name: str, rounded_to: torch.dtype, dtype: torch.dtype, device: torch.device, backend: Optional[str]
) -> list[Tensor]:
    """Outputs, final states and every gradient of the module `name` (fused_rnn's with `backend`,
    else torch.nn's) computed in `dtype` on `device`, from weights, inputs, initial states and
    output weights that are the same random values rounded to `rounded_to`."""
    ours_class, torch_class, keywords, packed = MODULES[name]
    torch.manual_seed(0)
    weights = {k: v.to(rounded_to).double() for k, v in torch_class(INPUT, **keywords).state_dict().items()}
    module = ours_class(INPUT, backend=backend, **keywords) if backend else torch_class(INPUT, **keywords)
    module.load_state_dict(weights)
    module.to(device, dtype)
    generator = torch.Generator().manual_seed(1)
    layers = keywords.get("num_layers", 1) * (2 if keywords.get("bidirectional") else 1)
    state = keywords.get("proj_size") or keywords["hidden_size"]
    x_shape = (BATCH, STEPS, INPUT) if keywords.get("batch_first") else (STEPS, BATCH, INPUT)
    state_shapes = [(layers, BATCH, state)] + ([(layers, BATCH, keywords["hidden_size"])] if torch_class is nn.LSTM else [])
    output_shape = (*x_shape[:2], (2 if keywords.get("bidirectional") else 1) * state)

    def draw(shape) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(rounded_to).to(device, dtype)

    x, states = draw(x_shape), [draw(shape) for shape in state_shapes]
    output_weights = [draw(shape) for shape in [output_shape, *state_shapes]]
    outputs, grads = module_outputs_and_grads(module, x, states, LENGTHS if packed else None, output_weights)
    return [*outputs, *grads]


def _module_errors(name: str, values: list[Tensor], exact: list[Tensor]) -> dict[str, float]:
    assert len(values) == len(exact), name
    return {f"value {i}": relative_error(v, e) for i, (v, e) in enumerate(zip(values, exact))}


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_torch_nn(backend, dtype, name):
    require(backend)
    if refuses(backend, dtype, lambda: _module_run(name, dtype, dtype, CUDA, backend)):
        return
    exact = _module_run(name, dtype, torch.float64, torch.device("cpu"), None)
    with poisoned_allocations():
        values = _module_run(name, dtype, dtype, CUDA, backend)
    assert all(v.dtype == dtype and v.device.type == CUDA.type for v in values)
    if dtype in TOLERANCE:
        tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
        limit = TF32_TOLERANCE if tf32 else TOLERANCE[dtype]
    else:
        own = _module_run(name, dtype, dtype, CUDA, None)
        limit = HALF_FACTOR * max(_module_errors(name, own, exact).values())
    assert_within(_module_errors(name, values, exact), limit, f"{backend} {dtype_id(dtype)} {name}")


# ---------------------------------------------------------------------------------------------
# Attention in float64
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype", [torch.float64], ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_parity_with_float64_reference(backend, dtype, score, case):
    if backend not in attention_ops.attention_backends(CUDA):
        pytest.skip(f"{backend} cannot run attention on CUDA here")
    errors = module_errors(score, case, backend, dtype, CUDA.type)
    assert_within(errors, attention_tolerance(score, case, dtype, CUDA.type), f"{backend} {score} {case}")
