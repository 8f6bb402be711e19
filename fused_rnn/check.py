"""`fused-rnn check`: the parity of every available backend on this machine's devices.

For each device, backend, op and dtype it runs one case with odd sizes and random lengths through
`fused_rnn.parity` (recurrences) or `fused_rnn.attention_parity` (attention scores): forward and
every gradient against the float64 reference. It prints the largest relative error beside the
tolerance. A dtype a backend does not support prints as "unsupported"
with the backend's reason; any failure makes the exit status 1.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from . import attention_parity, parity
from .attention_ops import attention_backends
from .backends import available_backends

DTYPES = {
    "cpu": (torch.float64, torch.float32, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}
CASE_SHAPE = {"steps": 7, "batch": 5, "hidden": 33, "proj": 11, "lengths": True, "seed": 7}
ATTENTION_CASE = attention_parity.Case(batch=3, tq=5, tk=13, dq=7, dk=7, dv=3, attn=9, lengths=True, seed=7)


def default_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _measure(errors_and_tolerance) -> tuple[str, str, str]:
    """Run a parity measurement -> (max relative error, tolerance, verdict) as printed strings."""
    try:
        errors, limit = errors_and_tolerance()
    except (RuntimeError, NotImplementedError, TypeError) as error:
        return "-", "-", f"unsupported: {str(error).splitlines()[0][:80]}"
    worst = max(errors.values())
    verdict = "pass" if worst <= limit else "FAIL"
    shown = "inf/nan" if math.isinf(worst) else f"{worst:.2e}"
    return shown, f"{limit:.1e}", verdict


def recurrence_row(backend: str, cell: str, dtype: torch.dtype, device: str) -> tuple[str, str, str]:
    case = parity.Case(cell, **CASE_SHAPE)
    return _measure(lambda: (parity.case_errors(case, backend, dtype, device), parity.tolerance(case, dtype, device)))


def attention_row(backend: str, score: str, dtype: torch.dtype, device: str) -> tuple[str, str, str]:
    case = ATTENTION_CASE
    return _measure(
        lambda: (
            attention_parity.module_errors(score, case, backend, dtype, device),
            attention_parity.tolerance(score, case, dtype, device),
        )
    )


def main(devices: Optional[Sequence[str]] = None) -> int:
    """Print the parity table; return 0 when no supported case fails, else 1."""
    header = f"{'device':<7}{'backend':<11}{'op':<11}{'dtype':<10}{'max rel err':>12}{'tolerance':>11}  result"
    print(header)
    print("-" * len(header))
    failures = 0
    for device in devices or default_devices():
        rows = [(recurrence_row, backend, cell) for backend in available_backends(device) for cell in parity.CELLS]
        rows += [
            (attention_row, backend, score)
            for backend in attention_backends(device)
            for score in attention_parity.SCORES
        ]
        for measure, backend, op in rows:
            for dtype in DTYPES[torch.device(device).type]:
                error, limit, verdict = measure(backend, op, dtype, device)
                failures += verdict == "FAIL"
                dtype_name = str(dtype).replace("torch.", "")
                print(f"{device:<7}{backend:<11}{op:<11}{dtype_name:<10}{error:>12}{limit:>11}  {verdict}", flush=True)
    print(f"\n{failures} failing case(s)" if failures else "\nall supported cases pass")
    return 1 if failures else 0
