"""The host programs of the CUDA attention kernels' checks, built once per test session, and the
problems they solve:

- tests/cuda_attention_host.cu (nvcc): the __host__ __device__ functions and the planner of the
  kernels (fragment maps, the tile loop on the host, tilings);
- tests/cuda_attention_emulation.cpp (g++): the kernels' own source under tests/cuda_emulation.h.

    context, lse, weights, grads = solve(emulation_program(), tmp_path, ADDITIVE, shape, dtype, seed=0)
    expected = reference_outputs(ADDITIVE, problem_inputs(...), torch.float64, ...)

A problem is a shape (B, Tq, Tk, F, Dv, lengths, processors) in a dtype: inputs rounded to the
dtype, random key lengths with the first row's at 1, a scale of 0.37 for the dot score.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.utils.cpp_extension

from cuda_toolchain import CUDA_DIR, NVCC, ROOT
from fused_rnn import reference
from fused_rnn.parity import relative_error

TESTS = ROOT / "tests"
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}  # DType
ADDITIVE, DOT = 0, 1  # AttentionScore
DOT_SCALE = 0.37
SHARED_BYTES = 232_448  # the H100's opt-in shared memory per block


def _build(name: str, command: list[str]) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    binary = directory / name
    result = subprocess.run([*command, "-o", str(binary)], capture_output=True, text=True, timeout=600,
                            cwd=directory)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}{result.stderr}"
    return binary


@functools.lru_cache(maxsize=None)
def host_program() -> Path:
    return _build("cuda_attention_host", [
        NVCC, "-std=c++17", "-O2", *torch.utils.cpp_extension.COMMON_NVCC_FLAGS, "-gencode=arch=compute_80,code=sm_80",
        str(TESTS / "cuda_attention_host.cu"), str(CUDA_DIR / "attention_plan.cpp")])


@functools.lru_cache(maxsize=None)
def emulation_program() -> Path:
    """The kernels compiled as host C++ (nvcc -x c++ drives the host compiler with the CUDA headers
    and runtime) with the emulation force-included, under AddressSanitizer: a read or write past
    any input, output, workspace or shared-memory buffer fails the run."""
    host_flags = f"-pthread,-Wno-attributes,-fsanitize=address,-include,{TESTS / 'cuda_emulation.h'}"
    return _build("cuda_attention_emulation", [
        NVCC, "-std=c++20", "-O1", "-Xcompiler", host_flags, "-x", "c++", str(CUDA_DIR / "attention_forward.cu"),
        str(CUDA_DIR / "attention_backward.cu"), str(TESTS / "cuda_attention_emulation.cpp"),
        str(CUDA_DIR / "attention_plan.cpp"), "-lasan", "-lpthread"])


def run(program: Path, *arguments: str, stdin: Optional[str] = None) -> str:
    """The program's standard output; AssertionError with its output when it fails."""
    environment = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    result = subprocess.run([str(program), *arguments], input=stdin, capture_output=True, text=True, timeout=600,
                            env=environment)
    assert result.returncode == 0, f"{program.name} {' '.join(arguments)}: {result.stdout}{result.stderr}"
    return result.stdout


def problem_inputs(score: int, shape: tuple, dtype: torch.dtype, seed: int):
    """(inputs by name, grad_context, grad_weights), float64 values rounded to dtype."""
    batch, tq, tk, features, dv, lengths, _ = shape
    generator = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=generator, dtype=torch.float64).to(dtype).double()

    inputs = {
        "query": randn(batch, tq, features),
        "keys": randn(batch, tk, features),
        "v": randn(features) if score == ADDITIVE else torch.zeros(features, dtype=torch.float64),
        "values": randn(batch, tk, dv),
        "key_lengths": None,
    }
    if lengths:
        key_lengths = torch.randint(1, tk + 1, (batch,), generator=generator)
        key_lengths[0] = 1
        inputs["key_lengths"] = key_lengths
    return inputs, randn(batch, tq, dv), randn(batch, tq, tk)


def _run_problem(program, tmp_path, command, header, arrays, counts):
    problem, result = tmp_path / f"{command}.in", tmp_path / f"{command}.out"
    with open(problem, "wb") as file:
        file.write(np.asarray(header[:16], dtype=np.int64).tobytes() + np.float64(header[16]).tobytes())
        for array in arrays:
            file.write(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    run(program, command, str(problem), str(result))
    flat = np.fromfile(result, dtype=np.float64)
    assert flat.size == sum(math.prod(c) for c in counts)
    outputs, start = [], 0
    for count in counts:
        size = math.prod(count)
        outputs.append(torch.from_numpy(flat[start:start + size].copy()).reshape(count))
        start += size
    return outputs


def solve(program, tmp_path, score, shape, dtype, inputs, grad_context, grad_weights, need_weights=True):
    """`program`'s forward, then its backward from that forward's outputs -> outputs by name."""
    batch, tq, tk, features, dv, lengths, processors = shape
    header = [DTYPE_CODES[dtype], score, batch, tq, tk, features, dv, int(lengths), int(need_weights),
              int(grad_weights is not None), processors, SHARED_BYTES, 0, 0, 0, 0,
              DOT_SCALE if score == DOT else 1.0]
    lengths_array = inputs["key_lengths"].double() if lengths else torch.zeros(batch, dtype=torch.float64)
    base = [inputs["query"], inputs["keys"], inputs["v"], inputs["values"], lengths_array]
    context, lse, weights = _run_problem(program, tmp_path, "forward", header, base,
                                         [(batch, tq, dv), (batch, tq), (batch, tq, tk) if need_weights else (0,)])
    saved = [weights] if grad_weights is not None else []
    given = [grad_weights] if grad_weights is not None else []
    d_query, d_keys, d_v, d_values = _run_problem(
        program, tmp_path, "backward", header, [*base, grad_context, *given, context, lse, *saved],
        [(batch, tq, features), (batch, tk, features), (features,), (batch, tk, dv)])
    return {"context": context, "lse": lse, "weights": weights if need_weights else None, "d_query": d_query,
            "d_keys": d_keys, "d_v": d_v if score == ADDITIVE else None, "d_values": d_values}


def reference_outputs(score, inputs, dtype, grad_context, grad_weights, need_weights=True):
    """fused_rnn.reference's forward and backward in `dtype` -> float64 outputs by name."""
    cast = {n: t if t is None or n == "key_lengths" else t.to(dtype) for n, t in inputs.items()}
    if score == ADDITIVE:
        forward_args = (cast["query"], cast["keys"], cast["v"], cast["values"], cast["key_lengths"])
        context, lse, weights = reference.additive_attention_forward(*forward_args, need_weights)
    else:
        forward_args = (cast["query"], cast["keys"], cast["values"], cast["key_lengths"])
        context, lse, weights = reference.dot_attention_forward(*forward_args, DOT_SCALE, need_weights)
    gw = None if grad_weights is None else grad_weights.to(dtype)
    saved = weights if gw is not None else None
    gc = grad_context.to(dtype)
    if score == ADDITIVE:
        grads = reference.additive_attention_backward(gc, gw, *forward_args, context, lse, saved)
    else:
        d_query, d_keys, d_values = reference.dot_attention_backward(gc, gw, *forward_args, context, lse, saved,
                                                                     DOT_SCALE)
        grads = (d_query, d_keys, None, d_values)
    names = ("context", "lse", "weights", "d_query", "d_keys", "d_v", "d_values")
    return {n: (t.double() if t is not None else None) for n, t in zip(names, (context, lse, weights, *grads))}


def check_against_reference(program, tmp_path, score, shape, dtype, seeds=(0, 1)):
    """`program` on fresh problems (without, then with grad_weights) against the float64 reference:
    float64 within 1e-12, float32 within 1e-5, half types within twice the reference's own error."""
    for seed, with_grad_weights in zip(seeds, (False, True)):
        inputs, grad_context, grad_weights = problem_inputs(score, shape, dtype, seed)
        grad_weights = grad_weights if with_grad_weights else None
        expected = reference_outputs(score, inputs, torch.float64, grad_context, grad_weights)
        actual = solve(program, tmp_path, score, shape, dtype, inputs, grad_context, grad_weights)
        if dtype == torch.float64:
            limit = 1e-12
        elif dtype == torch.float32:
            limit = 1e-5
        else:
            own = reference_outputs(score, inputs, dtype, grad_context, grad_weights)
            limit = 2 * max(relative_error(own[n], expected[n]) for n in expected if expected[n] is not None)
        errors = {n: relative_error(actual[n], expected[n]) for n in expected if expected[n] is not None}
        bad = {n: e for n, e in errors.items() if not e <= limit}
        assert not bad, f"grad_weights={with_grad_weights}: errors above {limit:.1e}: {bad}"
