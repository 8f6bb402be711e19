"""How the additive score's tanh may be computed on the GPU, decided on the CPU.

Two approximations are available (csrc/cuda/attention_math.cuh, TanhKind): tanh.approx.f32, whose
maximum relative error over the whole range is 2^-11 (PTX ISA), and 1 - 2 / (exp(2x) + 1) on
ex2.approx and an approximate division (2 ulp each), whose absolute error stays below 2^-20. The
emulation: the float64 reference (fused_rnn.reference through AdditiveAttention, forward and
backward) with every tanh h replaced by h (1 + s 2^-11), or by h + s 2^-20, the signs s chosen two
ways: sign(v_a) sign(h) (every score moved as far as the bound allows) and independent random signs
(measured to hurt the gradients most). The error this adds to the outputs and gradients, relative
to the unperturbed float64 reference, is compared with the largest error the reference itself makes
in the half dtype: the kernels' error is about that rounding error plus the tanh error, and the
tolerance is twice the rounding error, so an approximation fits a dtype when it adds at most half
of it. The kernels' choice (Numerics<Scalar>::kTanh, printed by tests/cuda_attention_host.cu) must
fit, and the hardware tanh must have been refused only where it does not fit: bfloat16 uses it
(measured ~0.2x), float16 (~1.8x) computes tanh from exp."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cuda_attention_programs import host_program, run
from cuda_toolchain import NVCC
from fused_rnn import attention_parity
from fused_rnn.attention_parity import Case
from fused_rnn.parity import relative_error

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

HARDWARE_RELATIVE_ERROR = 2.0**-11  # tanh.approx.f32, PTX ISA
FROM_EXP_ABSOLUTE_ERROR = 2.0**-20  # 1 - 2 / (ex2.approx(2x log2 e) + 1), approximate division
ALLOWED_SHARE = 0.5  # of the reference's own error in the half dtype
CASES = [
    Case(batch=2, tq=37, tk=70, dq=11, dk=11, dv=5, attn=19, lengths=True, seed=2),
    Case(batch=4, tq=33, tk=130, dq=64, dk=64, dv=64, attn=64, lengths=True, seed=3),
]


def _perturbed_tanh(exact, kind: str, pattern: str, v_sign: torch.Tensor):
    generator = torch.Generator().manual_seed(7)

    def tanh(x, *args, **kwargs):
        h = exact(x, *args, **kwargs)
        if pattern == "sign of v h":
            sign = v_sign * torch.sign(h)
        else:
            sign = torch.randint(0, 2, h.shape, generator=generator, dtype=h.dtype) * 2 - 1
        if kind == "hardware":
            return h * (1 + HARDWARE_RELATIVE_ERROR * sign)
        return h + FROM_EXP_ABSOLUTE_ERROR * sign

    return tanh


def emulated_share(case: Case, dtype: torch.dtype, kind: str, pattern: str, monkeypatch) -> float:
    """max over outputs of the tanh error / max over outputs of the reference's error in dtype."""
    reference_error = max(attention_parity.module_errors("additive", case, "reference", dtype).values())
    generator = torch.Generator().manual_seed(case.seed)
    inputs = attention_parity.make_inputs("additive", case, generator)
    module = copy.deepcopy(attention_parity.make_module("additive", case, dtype, "reference")).double()
    rounded = {n: t if t is None or n == "key_lengths" else t.to(dtype).double() for n, t in inputs.items()}
    grad_context = torch.randn(case.batch, case.tq, case.dv or case.dk, generator=generator, dtype=torch.float64)
    grad_weights = torch.randn(case.batch, case.tq, case.tk, generator=generator, dtype=torch.float64)

    def outputs():
        return attention_parity.run_module(module, rounded, torch.float64, "cpu", grad_context, grad_weights)

    exact = outputs()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "tanh", _perturbed_tanh(torch.tanh, kind, pattern, torch.sign(module.v.detach())))
        perturbed = outputs()
    return max(relative_error(perturbed[n], exact[n]) for n in exact) / reference_error


def worst_share(dtype, kind, monkeypatch) -> float:
    return max(emulated_share(case, dtype, kind, pattern, monkeypatch)
               for case in CASES for pattern in ("sign of v h", "random"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_kernels_tanh_fits_the_tolerance_and_the_hardware_one_is_refused_only_where_it_does_not(
        dtype, monkeypatch):
    kind = json.loads(run(host_program(), "traits"))[str(dtype).removeprefix("torch.")]["tanh"]
    assert kind in ("hardware", "from_exp"), f"{dtype}: tanh {kind}"
    share = worst_share(dtype, kind, monkeypatch)
    assert share <= ALLOWED_SHARE, f"{dtype}: tanh {kind} adds up to {share:.3f}x the reference's error"
    if kind != "hardware":
        hardware = worst_share(dtype, "hardware", monkeypatch)
        assert hardware > ALLOWED_SHARE, (
            f"{dtype} avoids tanh.approx, which would add only {hardware:.3f}x the reference's error")
