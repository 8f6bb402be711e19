"""AdditiveAttention and LuongAttention on every backend that runs here: parity of the context, the
weights and every gradient (query, keys, values, parameters) with the float64 reference; weights
that sum to one and vanish past each key length; argument errors; torch.compile."""

from __future__ import annotations

import math

import pytest
import torch

import fused_rnn
from fused_rnn import attention_ops
from fused_rnn.attention_parity import OUTPUTS, SCORES, Case, make_inputs, make_module, module_errors, tolerance

CASES = [
    Case(batch=3, tq=0, tk=13, dq=7, dk=7, dv=3, attn=9, lengths=True),
    Case(batch=2, tq=5, tk=9, dq=6, dk=6, dv=0, attn=5, lengths=False, seed=1),
    Case(batch=2, tq=37, tk=70, dq=11, dk=11, dv=5, attn=19, lengths=True, seed=2),
]


def require(backend: str, device: str = "cpu") -> None:
    if backend not in attention_ops.attention_backends(device):
        pytest.skip(f"attention backend {backend!r} cannot run on {device} here")


PARITY = [
    ("reference", torch.float64),
    ("reference", torch.float32),
    ("triton", torch.float64),
    ("triton", torch.float32),
    ("native", torch.float64),
    ("native", torch.float32),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("backend,dtype", PARITY, ids=lambda x: str(x).replace("torch.", ""))
def test_parity_with_float64_reference(backend, dtype, score, case):
    require(backend)
    errors = module_errors(score, case, backend, dtype)
    limit = tolerance(score, case, dtype)
    bad = {name: error for name, error in errors.items() if not error <= limit}
    assert not bad, f"{backend} {dtype} {score} {case}: errors above {limit:.1e}: {bad}"


@pytest.mark.parametrize("outputs", [("context",), ("weights",), OUTPUTS], ids="+".join)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_requested_weights_with_a_loss_on_either_output(backend, score, outputs):
    """need_weights=True (the weights drawn as an alignment heatmap, say) with a loss on the
    context alone, on the weights alone, or on both: every gradient matches the reference's."""
    require(backend)
    case = Case(batch=3, tq=4, tk=11, dq=5, dk=5, dv=3, attn=6, lengths=True, seed=5)
    errors = module_errors(score, case, backend, torch.float64, outputs=outputs)
    limit = tolerance(score, case, torch.float64)
    bad = {name: error for name, error in errors.items() if not error <= limit}
    assert not bad, f"{backend} {score} loss on {outputs}: errors above {limit:.1e}: {bad}"


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("backend", ["reference", "triton", "native"])
def test_parity_without_weights(backend, score):
    """need_weights=False: no weights stored or returned, the context and every gradient as the
    reference's."""
    require(backend)
    case = CASES[2]
    errors = module_errors(score, case, backend, torch.float64, need_weights=False)
    assert "weights" not in errors
    bad = {name: error for name, error in errors.items() if not error <= tolerance(score, case, torch.float64)}
    assert not bad, f"{backend} {score}: {bad}"


@pytest.mark.parametrize("score,dtype", [("additive", torch.float16), ("general", torch.bfloat16)],
                         ids=["additive-float16", "general-bfloat16"])
def test_triton_half_precision_parity_in_interpreter(score, dtype):
    require("triton")
    case = CASES[2]
    errors = module_errors(score, case, "triton", dtype)
    limit = tolerance(score, case, dtype)
    assert max(errors.values()) <= limit, (errors, limit)


# On CUDA, also shapes that take every path of the CUDA kernels: a split-K decoder step over
# several key tiles, several query row blocks and key tiles per split, features and values in
# several chunks. The half types' tolerance (twice the reference's own error) is then stable: each
# case was checked on the CPU with the kernels' host emulation in the native backend's place.
CUDA_CASES = CASES + [
    Case(batch=16, tq=0, tk=130, dq=33, dk=33, dv=7, attn=33, lengths=True),
    Case(batch=2, tq=37, tk=150, dq=24, dk=24, dv=16, attn=24, lengths=False, seed=1),
    Case(batch=2, tq=20, tk=70, dq=300, dk=300, dv=270, attn=300, lengths=True, seed=2),
]


@pytest.mark.cuda
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no-weights"])
@pytest.mark.parametrize("case", CUDA_CASES, ids=str)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["triton", "native"])
def test_cuda_parity_with_float64_reference(backend, dtype, score, case, need_weights):
    require(backend, "cuda")
    errors = module_errors(score, case, backend, dtype, "cuda", need_weights=need_weights)
    limit = tolerance(score, case, dtype, "cuda", need_weights)
    bad = {name: error for name, error in errors.items() if not error <= limit}
    assert not bad, f"{backend} cuda {dtype} {score} {case} need_weights={need_weights}: errors above {limit:.1e}: {bad}"


@pytest.mark.cuda
@pytest.mark.parametrize("score", ["additive", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_native_results_repeat_bitwise(score, dtype):
    """Forward and backward twice on the same inputs give the same bits (no atomics), with
    split-K and chunked features and values in play."""
    require("native", "cuda")
    generator = torch.Generator().manual_seed(6)
    batch, tq, tk, features, dv = 3, 40, 300, 300, 270

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).to("cuda", dtype).requires_grad_()

    query, keys, values = leaf(batch, tq, features), leaf(batch, tk, features), leaf(batch, tk, dv)
    v = leaf(features)
    lengths = torch.tensor([1, 300, 177], device="cuda")
    grad_context = torch.randn(batch, tq, dv, generator=generator).to("cuda", dtype)
    grad_weights = torch.randn(batch, tq, tk, generator=generator).to("cuda", dtype)

    def run():
        if score == "additive":
            context, _, weights = attention_ops.additive_attention_forward(query, keys, v, values, lengths, True,
                                                                           "native")
            leaves = [query, keys, v, values]
        else:
            context, _, weights = attention_ops.dot_attention_forward(query, keys, values, lengths, 0.05, True,
                                                                      "native")
            leaves = [query, keys, values]
        grads = torch.autograd.grad([context, weights], leaves, [grad_context, grad_weights])
        return [context, weights, *grads]

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("score", ["additive", "scaled_dot"])
def test_weights_sum_to_one_and_vanish_past_length(backend, score):
    require(backend)
    case = Case(batch=4, tq=6, tk=40, dq=8, dk=8, dv=3, attn=7, lengths=True)
    module = make_module(score, case, torch.float32, backend)
    inputs = make_inputs(score, case, torch.Generator().manual_seed(3))
    lengths = torch.tensor([1, 40, 17, 33])
    with torch.no_grad():
        context, weights = module(inputs["query"].float(), inputs["keys"].float(),
                                  inputs["values"].float(), key_lengths=lengths, need_weights=True)
        unmasked, _ = module(inputs["query"].float(), inputs["keys"].float()[:, :1],
                             inputs["values"].float()[:, :1])
    positions = torch.arange(case.tk)
    past = positions[None, None, :] >= lengths[:, None, None]
    assert torch.equal(weights.masked_select(past.expand_as(weights)), torch.zeros(int(past.expand_as(weights).sum())))
    torch.testing.assert_close(weights.sum(-1), torch.ones(case.batch, case.tq), rtol=0, atol=1e-6)
    # Row 0 sees one key: its context is that key's value exactly as if the others were absent.
    torch.testing.assert_close(context[0], unmasked[0], rtol=1e-6, atol=1e-6)


def test_need_weights_false_returns_none_and_same_context():
    module = fused_rnn.AdditiveAttention(4, 5, 6, backend="reference")
    query, keys = torch.randn(2, 3, 4), torch.randn(2, 7, 5)
    context, weights = module(query, keys, key_lengths=torch.tensor([2, 7]))
    assert weights is None
    with_weights, _ = module(query, keys, key_lengths=torch.tensor([2, 7]), need_weights=True)
    torch.testing.assert_close(context, with_weights, rtol=0, atol=0)
    step_context, step_weights = module(query[:, 0], keys, need_weights=True)
    assert step_context.shape == (2, 5) and step_weights.shape == (2, 7)


def test_parameters_names_shapes_and_init():
    additive = fused_rnn.AdditiveAttention(7, 5, 11)
    shapes = {name: tuple(p.shape) for name, p in additive.named_parameters()}
    assert shapes == {"w_query": (11, 7), "w_key": (11, 5), "bias": (11,), "v": (11,)}
    assert additive.w_query.abs().max() <= 1 / math.sqrt(7) and additive.w_key.abs().max() <= 1 / math.sqrt(5)
    assert additive.v.abs().max() <= 1 / math.sqrt(11) and additive.v.std() > 0
    general = fused_rnn.LuongAttention(7, 5)
    assert {n: tuple(p.shape) for n, p in general.named_parameters()} == {"weight": (7, 5)}
    assert list(fused_rnn.LuongAttention(5, 5, "dot").parameters()) == []
    assert fused_rnn.LuongAttention(4, 4, "scaled_dot").scale == 0.5


@pytest.mark.parametrize("module_name", ["AdditiveAttention", "LuongAttention"])
def test_autocast_runs_the_op_in_the_autocast_dtype(module_name):
    module = getattr(fused_rnn, module_name)(4, 5, *([6] if module_name == "AdditiveAttention" else []),
                                             backend="reference")
    query = torch.randn(2, 3, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context, weights = module(query, torch.randn(2, 7, 5), need_weights=True)
    assert context.dtype == weights.dtype == torch.bfloat16
    context.float().sum().backward()
    assert query.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.parameters())


def test_backend_attribute():
    module = fused_rnn.LuongAttention(3, 3, "dot", backend="reference")
    assert module.backend == "reference"
    module.backend = "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        module.backend = "cudnn"
    query, keys = torch.randn(2, 3), torch.randn(2, 4, 3)
    module.backend = "native"
    if "native" not in attention_ops.attention_backends("cpu"):
        with pytest.raises(RuntimeError, match="native"):
            module(query, keys)
        return
    native_context, _ = module(query, keys)
    module.backend = "reference"
    reference_context, _ = module(query, keys)
    torch.testing.assert_close(native_context, reference_context, rtol=1e-5, atol=1e-6)


BAD_ARGUMENTS = [
    ("key_lengths", dict(key_lengths=torch.tensor([0, 3])), RuntimeError, r"key_lengths must lie in \[1, 6\].*\[0, 3\]"),
    ("key_lengths", dict(key_lengths=torch.tensor([7, 3])), RuntimeError, r"key_lengths must lie in \[1, 6\].*\[3, 7\]"),
    ("key_lengths", dict(key_lengths=torch.tensor([3, 3, 3])), ValueError, r"key_lengths must have shape \[B\] = \[2\]"),
    ("key_lengths", dict(key_lengths=torch.tensor([3.0, 2.0])), TypeError, "key_lengths must be an integer tensor"),
    ("keys", dict(keys=torch.randn(3, 6, 5)), ValueError, r"keys must have batch size 2"),
    ("keys", dict(keys=torch.randn(2, 6, 4)), ValueError, r"keys must have 5 features \(key_size\)"),
    ("keys", dict(keys=torch.randn(2, 0, 5)), ValueError, r"keys must hold at least one key"),
    ("keys", dict(keys=torch.randn(2, 6, 5, dtype=torch.float64)), TypeError, r"keys must have dtype torch.float32"),
    ("query", dict(query=torch.randn(2, 3, 5)), ValueError, r"query must have 4 features \(query_size\)"),
    ("query", dict(query=torch.randn(2, 1, 3, 4)), ValueError, r"query must have shape \[B, Tq, query_size\]"),
    ("query", dict(query=torch.ones(2, 3, 4, dtype=torch.int64)), TypeError, r"query must be a floating-point"),
    ("values", dict(values=torch.randn(2, 5, 3)), ValueError, r"values must have Tk = 6 positions"),
    ("values", dict(values=torch.randn(1, 6, 3)), ValueError, r"values must have batch size 2"),
    ("values", dict(values=torch.randn(2, 6, 3).half()), TypeError, r"values must have dtype torch.float32"),
]


@pytest.mark.parametrize("module_name", ["AdditiveAttention", "LuongAttention"])
@pytest.mark.parametrize("argument,change,error,message", BAD_ARGUMENTS, ids=lambda x: x if isinstance(x, str) else "")
def test_bad_arguments_raise_clear_errors(module_name, argument, change, error, message):
    module = getattr(fused_rnn, module_name)(4, 5, *([3] if module_name == "AdditiveAttention" else []),
                                             backend="reference")
    args = dict(query=torch.randn(2, 3, 4), keys=torch.randn(2, 6, 5), values=None, key_lengths=None)
    args.update(change)
    with pytest.raises(error, match=message):
        module(args["query"], args["keys"], args["values"], key_lengths=args["key_lengths"])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="score must be one of"):
        fused_rnn.LuongAttention(4, 4, "bilinear")
    with pytest.raises(ValueError, match="needs query_size == key_size"):
        fused_rnn.LuongAttention(4, 5, "dot")
    with pytest.raises(ValueError, match="attn_size must be greater than zero"):
        fused_rnn.AdditiveAttention(4, 5, 0)


@pytest.mark.parametrize("score,backend", [("additive", "auto"), ("scaled_dot", "auto"), ("general", "triton")])
def test_compile_fullgraph_matches_eager(score, backend):
    require(backend if backend != "auto" else "reference")
    case = CASES[1]
    module = make_module(score, case, torch.float32, backend)
    inputs = make_inputs(score, case, torch.Generator().manual_seed(4))
    query = inputs["query"].float().requires_grad_()
    keys = inputs["keys"].float().requires_grad_()
    lengths = torch.tensor([9, 4])
    compiled = torch.compile(module, fullgraph=True)
    outputs = [module(query, keys, key_lengths=lengths, need_weights=True),
               compiled(query, keys, key_lengths=lengths, need_weights=True)]
    grads = [torch.autograd.grad(c.sum() + w[..., 0].sum(), [query, keys, *module.parameters()])
             for c, w in outputs]
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(grads[1], grads[0])
