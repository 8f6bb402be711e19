"""The native C++ attention kernels on the CPU: parity of every score with the float64 reference
through the modules, weights that sum to one and vanish past each length, opcheck of the C++ ops
and of the Python ops with backend="native", argument errors of the C++ ops, and results that do
not depend on the thread count. On a GPU (cuda marker) the same opchecks and device errors of the
CUDA kernels."""

from __future__ import annotations

import pytest
import torch

from fused_rnn import attention_ops
from fused_rnn.attention_parity import SCORES, Case, make_inputs, make_module, module_errors, tolerance

pytestmark = pytest.mark.skipif(
    "native" not in attention_ops.attention_backends("cpu"),
    reason="the native extension (fused_rnn._C) with its attention kernels is not built here",
)

CASES = [
    Case(batch=3, tq=0, tk=13, dq=7, dk=7, dv=3, attn=9, lengths=True),
    Case(batch=2, tq=1, tk=70, dq=6, dk=6, dv=0, attn=17, lengths=False, seed=1),
    Case(batch=2, tq=11, tk=131, dq=11, dk=11, dv=5, attn=19, lengths=True, seed=2),
    Case(batch=1, tq=7, tk=1, dq=3, dk=3, dv=2, attn=1, lengths=False, seed=3),
    # more query rows than the key sweep gathers at once (64), in groups that do not divide them
    Case(batch=2, tq=67, tk=70, dq=5, dk=5, dv=3, attn=6, lengths=True, seed=4),
]


def _check(score, case, dtype):
    errors = module_errors(score, case, "native", dtype)
    limit = tolerance(score, case, dtype)
    bad = {name: error for name, error in errors.items() if not error <= limit}
    assert not bad, f"native {dtype} {score} {case}: errors above {limit:.1e}: {bad}"


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_parity_with_float64_reference(dtype, score, case):
    _check(score, case, dtype)


@pytest.mark.parametrize("score", ["additive", "general"])
def test_bfloat16_parity(score):
    _check(score, CASES[2], torch.bfloat16)


@pytest.mark.parametrize("score", ["additive", "scaled_dot"])
def test_weights_sum_to_one_and_vanish_past_length(score):
    case = Case(batch=4, tq=6, tk=150, dq=8, dk=8, dv=3, attn=7, lengths=True)
    module = make_module(score, case, torch.float32, "native")
    inputs = make_inputs(score, case, torch.Generator().manual_seed(3))
    lengths = torch.tensor([1, 150, 67, 130])
    with torch.no_grad():
        _, weights = module(inputs["query"].float(), inputs["keys"].float(), inputs["values"].float(),
                            key_lengths=lengths, need_weights=True)
    past = torch.arange(case.tk)[None, None, :] >= lengths[:, None, None]
    assert torch.all(weights.masked_select(past.expand_as(weights)) == 0)
    assert torch.all(weights.masked_select(~past.expand_as(weights)) > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(case.batch, case.tq), rtol=0, atol=1e-6)


B, TQ, TK, A, DV = 2, 3, 5, 4, 2


def _leaves(dtype, *shapes, device="cpu"):
    return [torch.randn(*shape, dtype=dtype, device=device) for shape in shapes]


def _forward_args(score, dtype, lengths, need_weights, b=B, tq=TQ, tk=TK, a=A, dv=DV, device="cpu"):
    """The C++ forward op's arguments, no gradients (the C++ ops are backend functions: autograd
    belongs to the Python ops) (additive: pq, pk, v, values; dot: query, keys, values, scale)."""
    if score == "additive":
        return (*_leaves(dtype, (b, tq, a), (b, tk, a), (a,), (b, tk, dv), device=device), lengths, need_weights)
    return (*_leaves(dtype, (b, tq, a), (b, tk, a), (b, tk, dv), device=device), lengths, 0.5, need_weights)


def _backward_args(score, forward_args, need_weights):
    native = getattr(torch.ops.fused_rnn, f"native_{score}_attention_forward")
    context, lse, weights = native(*forward_args)
    grad_context = torch.randn_like(context)
    grad_weights, weights = (torch.randn_like(weights), weights) if need_weights else (None, None)
    if score == "additive":
        pq, pk, v, values, lengths, _ = forward_args
        return (grad_context, grad_weights, pq, pk, v, values, lengths, context, lse, weights)
    query, keys, values, lengths, scale, _ = forward_args
    return (grad_context, grad_weights, query, keys, values, lengths, context, lse, weights, scale)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("score", ["additive", "dot"])
def test_opcheck_native_ops(score, need_weights):
    args = _forward_args(score, torch.float64, torch.tensor([TK, 2]), need_weights)
    torch.library.opcheck(getattr(torch.ops.fused_rnn, f"native_{score}_attention_forward").default, args)
    backward = getattr(torch.ops.fused_rnn, f"native_{score}_attention_backward").default
    torch.library.opcheck(backward, _backward_args(score, args, need_weights))


@pytest.mark.cuda
@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("score", ["additive", "dot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_native_ops_on_cuda(dtype, score, need_weights):
    if "native" not in attention_ops.attention_backends("cuda"):
        pytest.skip("the native CUDA attention kernels are not built here")
    args = _forward_args(score, dtype, torch.tensor([TK, 2], device="cuda"), need_weights, device="cuda")
    torch.library.opcheck(getattr(torch.ops.fused_rnn, f"native_{score}_attention_forward").default, args)
    backward = getattr(torch.ops.fused_rnn, f"native_{score}_attention_backward").default
    torch.library.opcheck(backward, _backward_args(score, args, need_weights))


@pytest.mark.cuda
def test_native_cuda_ops_reject_tensors_elsewhere():
    if "native" not in attention_ops.attention_backends("cuda"):
        pytest.skip("the native CUDA attention kernels are not built here")
    query, keys, values = (t.cuda() for t in (torch.randn(B, TQ, A), torch.randn(B, TK, A), torch.randn(B, TK, DV)))
    with pytest.raises(RuntimeError, match=r"values must be a CUDA tensor for the native CUDA kernels, got a cpu"):
        torch.ops.fused_rnn.native_dot_attention_forward(query, keys, values.cpu(), None, 1.0, False)
    with pytest.raises(RuntimeError, match=r"key_lengths must be a CUDA tensor"):
        torch.ops.fused_rnn.native_dot_attention_forward(query, keys, values, torch.tensor([1, 2]), 1.0, False)
    with pytest.raises(RuntimeError, match=r"key_lengths must lie in \[1, 5\]"):
        torch.ops.fused_rnn.native_dot_attention_forward(query, keys, values, torch.tensor([0, 2], device="cuda"),
                                                         1.0, False)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("score", ["additive", "dot"])
def test_opcheck_python_ops_with_native_backend(score, need_weights):
    args = _forward_args(score, torch.float32, torch.tensor([TK, 2]), need_weights)
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    torch.library.opcheck(getattr(attention_ops, f"{score}_attention_forward"), (*args, "native"))


BAD_ARGUMENTS = [
    (lambda a: {**a, "pk": torch.randn(B, TK, A + 1)}, r"pk must have shape \[B, Tk, F\] = \[2, Tk, 4\]"),
    (lambda a: {**a, "pk": torch.randn(B, 0, A)}, r"pk must hold at least one key"),
    (lambda a: {**a, "v": torch.randn(A + 2)}, r"v must have shape \[A\] = \[4\], got \[6\]"),
    (lambda a: {**a, "values": torch.randn(B, TK - 1, DV)}, r"values must have shape \[B, Tk, Dv\] = \[2, 5, Dv\]"),
    (lambda a: {**a, "values": torch.randn(B, TK, DV).double()}, r"values must have dtype Double .*got Float|values must have dtype Float .*got Double"),
    (lambda a: {**a, "pq": torch.ones(B, TQ, A, dtype=torch.int64)}, r"pq must be float16, bfloat16, float32 or float64, got Long"),
    (lambda a: {**a, "key_lengths": torch.tensor([0, 3])}, r"key_lengths must lie in \[1, 5\].*got values in \[0, 3\]"),
    (lambda a: {**a, "key_lengths": torch.tensor([6, 3])}, r"key_lengths must lie in \[1, 5\].*got values in \[3, 6\]"),
    (lambda a: {**a, "key_lengths": torch.tensor([3, 3], dtype=torch.int32)}, r"key_lengths must have dtype Long"),
    (lambda a: {**a, "key_lengths": torch.tensor([3, 3, 3])}, r"key_lengths must have shape \[B\] = \[2\], got \[3\]"),
]


@pytest.mark.parametrize("change,message", BAD_ARGUMENTS, ids=lambda x: x if isinstance(x, str) else "")
def test_native_op_argument_errors(change, message):
    good = dict(pq=torch.randn(B, TQ, A), pk=torch.randn(B, TK, A), v=torch.randn(A),
                values=torch.randn(B, TK, DV), key_lengths=torch.tensor([3, 5]))
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fused_rnn.native_additive_attention_forward(*change(good).values(), False)


def test_native_dot_op_rejects_bad_scale_and_unpaired_weights():
    query, keys, values = torch.randn(B, TQ, A), torch.randn(B, TK, A), torch.randn(B, TK, DV)
    with pytest.raises(RuntimeError, match="scale must be a finite positive number, got -1"):
        torch.ops.fused_rnn.native_dot_attention_forward(query, keys, values, None, -1.0, False)
    context, lse, weights = torch.ops.fused_rnn.native_dot_attention_forward(query, keys, values, None, 1.0, True)
    with pytest.raises(RuntimeError, match="grad_weights and weights must be given together"):
        torch.ops.fused_rnn.native_dot_attention_backward(
            torch.ones_like(context), None, query, keys, values, None, context, lse, weights, 1.0)


@pytest.mark.parametrize("tq", [40, 3], ids=["keys-transposed", "keys-by-pairs"])
@pytest.mark.parametrize("score", ["additive", "dot"])
def test_results_do_not_depend_on_thread_count(score, tq):
    torch.manual_seed(5)  # large enough for several tasks per thread in every stage
    forward_args = _forward_args(score, torch.float32, torch.tensor([300, 77]), True, tq=tq, tk=300, a=64, dv=8)
    backward_args = _backward_args(score, forward_args, True)
    forward = getattr(torch.ops.fused_rnn, f"native_{score}_attention_forward")
    backward = getattr(torch.ops.fused_rnn, f"native_{score}_attention_backward")
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            results.append([*forward(*forward_args), *backward(*backward_args)])
    finally:
        torch.set_num_threads(threads)
    for single, multi in zip(*results):
        assert torch.equal(single, multi)
