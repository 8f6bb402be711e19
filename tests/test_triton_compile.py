"""Every Triton kernel compiles for an H100 (sm_90) in every mode, the persistent mode's grid
barrier included, without a GPU: the interpreter tests cannot see the compiled path (types across
runtime branches, the barrier's atomics), this does. Run as a script it compiles them itself; the
test runs it in a subprocess because kernels defined under TRITON_INTERPRET=1 cannot be compiled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")

KERNEL_MODES = [
    # (module, kernel, kernel-specific constexprs; None for a pointer the mode does not pass)
    ("rnn", "rnn_forward_kernel", {"RELU": False}),
    ("rnn", "rnn_backward_kernel", {"RELU": True}),
    ("lstm", "lstm_forward_kernel", {"PROJECTED": False, "SAVE": True}),
    ("lstm", "lstm_forward_kernel", {"PROJECTED": True, "SAVE": True}),
    ("lstm", "lstm_forward_kernel", {"PROJECTED": False, "SAVE": False, "cs": None, "gates": None}),
    ("lstm", "lstm_backward_kernel", {"PROJECTED": False}),
    ("lstm", "lstm_backward_kernel", {"PROJECTED": True}),
    ("gru", "gru_forward_kernel", {"HAS_BIAS": True, "SAVE": True}),
    ("gru", "gru_forward_kernel", {"HAS_BIAS": True, "SAVE": False, "gates": None}),
    ("gru", "gru_backward_kernel", {}),
]
INTEGERS = {"T", "B", "H", "P", "k_start", "k_stop"}
FLOAT32_POINTERS = {"c_state", "cs", "unprojected", "dh_state", "dc_state", "d_unprojected"}


def _signature(kernel, constexprs: dict, dtype: str) -> dict:
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in INTEGERS:
            types[name] = "i32"
        elif name == "lengths":
            types[name] = "*i64"
        elif name == "barrier":
            types[name] = "*i32"
        else:
            types[name] = "*fp32" if name in FLOAT32_POINTERS else f"*{dtype}"
    return types


def compile_all() -> None:
    """Compile each kernel in step and persistent mode, bfloat16 and float32 (tf32) tiles."""
    import importlib

    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    for module_name, kernel_name, extra in KERNEL_MODES:
        kernel = getattr(importlib.import_module(f"fused_rnn.kernels.{module_name}"), kernel_name)
        for persistent, (dtype, dot_dtype, precision) in (
            (False, ("bf16", tl.bfloat16, "ieee")),
            (not extra.get("PROJECTED", False), ("fp32", tl.float32, "tf32")),
        ):
            constexprs = dict(
                extra, PERSISTENT=persistent, HAS_LENGTHS=True, BLOCK_B=16, BLOCK_H=16, BLOCK_K=64,
                DOT_DTYPE=dot_dtype, PRECISION=precision,
            )
            constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
            source = ASTSource(kernel, _signature(kernel, constexprs, dtype), constexprs)
            compiled = triton.compile(source, target=target, options={"num_warps": 4})
            ptx = compiled.asm["ptx"]
            if persistent:
                assert "release" in ptx and "acquire" in ptx, f"{kernel_name}: no grid barrier in the PTX"
            print(f"{kernel_name} {extra} persistent={persistent} {dtype}: ok")


def test_kernels_compile_for_sm90():
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("Triton has no NVIDIA backend here")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, __file__], env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    compile_all()
