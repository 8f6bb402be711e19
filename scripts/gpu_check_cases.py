"""One small call of every CUDA kernel of the triton and native backends, for compute-sanitizer.

Recurrence: every cell (rnn_tanh, rnn_relu, lstm, lstm_proj, gru) with per-row lengths, forward
and backward through the custom ops, and the inference op of LSTM and GRU; on triton once more in
the persistent mode (one launch, grid barrier). Attention: every score, a query block with key
lengths and weights returned, and a decoder step without weights, forward and backward. A backend
that cannot run here is skipped with its reason printed.

    compute-sanitizer --tool memcheck python scripts/gpu_check_cases.py

The last line is "gpu_check_cases: R ran, S skipped, F failed"; the exit status is 1 when a case
raised. `--device cpu` runs the same calls on the CPU (Triton under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fused_rnn import attention_ops, ops  # noqa: E402
from fused_rnn.attention_parity import SCORES, make_module  # noqa: E402
from fused_rnn.attention_parity import Case as AttentionCase  # noqa: E402
from fused_rnn.attention_parity import make_inputs as attention_inputs  # noqa: E402
from fused_rnn.backends import unavailable_reason  # noqa: E402
from fused_rnn.parity import CELLS, Case, forward_backward, make_inputs, op_arguments, run_op  # noqa: E402

KERNEL_BACKENDS = ("triton", "native")
RECURRENCE_CASES = [Case(cell, steps=5, batch=3, hidden=33, proj=7, lengths=True) for cell in CELLS]
ATTENTION_CASES = {
    "block": (AttentionCase(batch=2, tq=5, tk=9, dq=6, dk=6, dv=3, attn=7, lengths=True), True),
    "step": (AttentionCase(batch=3, tq=0, tk=11, dq=6, dk=6, dv=0, attn=5, lengths=False, seed=1), False),
}


def _cast(inputs: dict, dtype: torch.dtype, device: torch.device) -> dict:
    return {
        name: None if t is None else (t.to(device) if name in ("lengths", "key_lengths") else t.to(device, dtype))
        for name, t in inputs.items()
    }


def run_recurrence(case: Case, backend: str, dtype: torch.dtype, device: torch.device) -> None:
    """Forward and backward of the case's op, then its inference op (LSTM and GRU)."""
    inputs = make_inputs(case, torch.Generator().manual_seed(case.seed))
    with torch.no_grad():
        shapes = [output.shape for output in run_op(case.cell, "reference", inputs)]
    grads = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    forward_backward(case, backend, dtype, device, inputs, grads)
    family, args = op_arguments(case.cell, _cast(inputs, dtype, device))
    if family in ("lstm", "gru"):
        getattr(ops, f"{family}_inference")(*args, backend)


def run_attention(score: str, case: AttentionCase, need_weights: bool, backend: str,
                  dtype: torch.dtype, device: torch.device) -> None:
    """Forward and backward of one attention module call."""
    module = make_module(score, case, dtype, backend).to(device)
    tensors = _cast(attention_inputs(score, case, torch.Generator().manual_seed(case.seed)), dtype, device)
    query, keys = tensors["query"].requires_grad_(), tensors["keys"].requires_grad_()
    context, weights = module(query, keys, tensors["values"], key_lengths=tensors["key_lengths"],
                              need_weights=need_weights)
    loss = context.float().sum() + (weights.float().square().sum() if need_weights else 0)
    loss.backward()


def cases(device: torch.device, dtype: torch.dtype) -> list[tuple[str, Optional[str], Callable[[], None]]]:
    """(label, reason it cannot run or None, the call) of every case."""
    found = []
    for backend in KERNEL_BACKENDS:
        reason = unavailable_reason(backend, device)
        modes = ["step", "persistent"] if backend == "triton" and device.type == "cuda" else [""]
        for mode in modes:
            for case in RECURRENCE_CASES:
                call = (lambda c=case, b=backend, m=mode: _in_mode(m, lambda: run_recurrence(c, b, dtype, device)))
                found.append((f"{backend:7} {mode or 'recurrence':10} {case}", reason, call))
        attention_reason = reason or (
            None if backend in attention_ops.attention_backends(device) else f"{backend} has no attention kernels"
        )
        for score in SCORES:
            for kind, (case, need_weights) in ATTENTION_CASES.items():
                call = (lambda s=score, c=case, w=need_weights, b=backend: run_attention(s, c, w, b, dtype, device))
                found.append((f"{backend:7} {'attention':10} {score}-{kind}-{case}", attention_reason, call))
    return found


def _in_mode(mode: str, call: Callable[[], None]) -> None:
    """Run `call` with the Triton recurrence in `mode`: "step", "persistent"
    (FUSED_RNN_TRITON_PERSISTENT=1), or "" (as the environment says)."""
    if not mode:
        return call()
    from fused_rnn.kernels.launch import PERSISTENT_VARIABLE

    before = os.environ.get(PERSISTENT_VARIABLE)
    os.environ[PERSISTENT_VARIABLE] = "1" if mode == "persistent" else "0"
    try:
        call()
    finally:
        if before is None:
            del os.environ[PERSISTENT_VARIABLE]
        else:
            os.environ[PERSISTENT_VARIABLE] = before


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    ran = skipped = failed = 0
    for label, reason, call in cases(device, dtype):
        if reason is not None:
            print(f"skipped {label}: {reason}", flush=True)
            skipped += 1
            continue
        start = time.monotonic()
        try:
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception:
            print(f"FAILED  {label}:\n{traceback.format_exc()}", flush=True)
            failed += 1
        else:
            print(f"ok      {label} ({time.monotonic() - start:.2f} s)", flush=True)
        ran += 1
    print(f"gpu_check_cases: {ran} ran, {skipped} skipped, {failed} failed ({dtype}, {device})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
