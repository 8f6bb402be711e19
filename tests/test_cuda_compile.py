"""The CUDA sources of the native backend compile without a GPU, into the kernels the planner counts
on:

- every csrc/cuda/*.cu with bare nvcc for sm_90a (H100/H200) and sm_80, with ptxas's resource
  report (tests/cuda_toolchain.py): no recurrence kernel spills or has a stack frame, none uses
  static shared memory, each fits one block of 256 threads per SM;
- every kernel instantiation the planner picks at H in {256, 512, 768, 1024} x B in {1, 16, 64,
  256}, each cell, direction and math, is compiled (for both architectures) with no spills and
  within the plan's shared memory;
- in the SASS, the recurrence kernels of the tensor-core maths multiply with HMMA, the exact ones
  with FFMA / DFMA, and none touches local memory (LDL/STL);
- the plain CUDA C++ headers compile on their own, and the torch-facing csrc/cuda/*_api.cpp
  compiles with the host compiler against torch's headers (a CPU-only build of the extension
  never compiles it), every fused_rnn::cuda function it calls being defined by the other objects.

The .cu files are compiled with the flags torch.utils.cpp_extension gives nvcc in a real build
(no implicit half/bfloat16 conversions, relaxed constexpr), each once per session, two at a time.
Skipped without nvcc.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch.utils.cpp_extension
from cuda_plans import (
    BACKWARD, BF16_MMA, F16_MMA, F32_FMA, F64_FMA, FORWARD, GRU, JUDGED_HIDDEN, LSTM, RNN, TF32_MMA,
    build_plan_report, kernel_name, plans,
)
from cuda_toolchain import CUOBJDUMP, compile_cu, disassemble, instructions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

ARCHS = ["-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=sm_80"]
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
HEADERS = sorted(glob.glob(os.path.join(CUDA_DIR, "*.h")) + glob.glob(os.path.join(CUDA_DIR, "*.cuh")))
API_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*_api.cpp")))
CELL_FILES = {RNN: "rnn.cu", LSTM: "lstm.cu", GRU: "gru.cu"}
EXTENSION_FLAGS = list(torch.utils.cpp_extension.COMMON_NVCC_FLAGS)
THREADS, REGISTERS_PER_SM, MAX_REGISTERS = 256, 65536, 255
PLANNED_BATCH = (1, 16, 64, 256)


def _compile(arguments: list[str], cwd: str) -> None:
    result = subprocess.run([NVCC, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"nvcc {' '.join(arguments)}\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{file name: CompileReport} of every .cu file, compiled for sm_90a and sm_80."""
    out = tmp_path_factory.mktemp("cuda_objects")

    def build(source: str):
        directory = out / os.path.basename(source)
        directory.mkdir()
        return os.path.basename(source), compile_cu(source, directory, archs=("90a", "80"), extra_flags=EXTENSION_FLAGS)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(build, CU_FILES))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """[(cell, direction, problem, plan)] at the judged points, on an H100."""
    program = build_plan_report(tmp_path_factory.mktemp("planner"))
    problems = [
        (cell, direction, ("h100", cell, direction, math, batch, hidden, hidden, False))
        for cell in (RNN, LSTM, GRU)
        for direction in (FORWARD, BACKWARD)
        for math in range(5)
        for batch in PLANNED_BATCH
        for hidden in JUDGED_HIDDEN
    ]
    found = plans(program, [p for _, _, p in problems])
    return [(cell, direction, problem, plan) for (cell, direction, problem), plan in zip(problems, found)]


def _recurrence_kernels(report, arch):
    return report.find("recurrence_kernel<", arch)


def test_there_are_cuda_sources():
    assert CU_FILES and HEADERS and API_FILES
    assert set(CELL_FILES.values()) <= {os.path.basename(f) for f in CU_FILES}


@pytest.mark.parametrize("source", CU_FILES, ids=os.path.basename)
def test_cu_file_compiles_for_sm90a_and_sm80(source, reports):
    report = reports[os.path.basename(source)]
    assert report.object_path.exists()
    if os.path.basename(source) in CELL_FILES.values():
        for arch in ("sm_90a", "sm_80"):
            assert _recurrence_kernels(report, arch), f"{source}: no recurrence kernel for {arch}"


def test_recurrence_kernels_keep_everything_in_registers_and_dynamic_shared_memory(reports):
    """No spills and no stack frame in any step loop; no static shared memory (the planner lays out
    the dynamic shared memory itself); one 256-thread block fits the register file."""
    for name in CELL_FILES.values():
        for arch in ("sm_90a", "sm_80"):
            for kernel in _recurrence_kernels(reports[name], arch):
                assert kernel.spill_stores == kernel.spill_loads == 0, kernel
                assert kernel.stack_bytes == 0, kernel
                assert kernel.shared_bytes == 0, kernel
                assert kernel.registers <= MAX_REGISTERS and kernel.registers * THREADS <= REGISTERS_PER_SM, kernel


def test_every_planned_instantiation_is_compiled_within_its_plan(reports, planned):
    for cell, direction, problem, plan in planned:
        name = kernel_name(cell, direction, plan)
        for arch in ("sm_90a", "sm_80"):
            matches = [k for k in _recurrence_kernels(reports[CELL_FILES[cell]], arch) if k.name.startswith(name)]
            assert len(matches) == 1, (problem, name)
            kernel = matches[0]
            assert kernel.spill_stores == kernel.spill_loads == kernel.stack_bytes == 0, (problem, kernel)
            assert kernel.registers * THREADS <= REGISTERS_PER_SM, (problem, kernel)
            assert kernel.shared_bytes + plan["shared_bytes"] <= plan["shared_per_block_optin"], (problem, kernel)


MATH_OPCODES = {BF16_MMA: "HMMA", F16_MMA: "HMMA", TF32_MMA: "HMMA", F32_FMA: "FFMA", F64_FMA: "DFMA"}


@pytest.mark.parametrize("cell", (RNN, LSTM, GRU), ids=("rnn", "lstm", "gru"))
def test_step_loops_multiply_on_tensor_cores_without_local_memory(reports, cell):
    if CUOBJDUMP is None:
        pytest.skip("no cuobjdump (neither in the CUDA toolkit nor in the triton wheel)")
    sass = disassemble(reports[CELL_FILES[cell]].object_path, "sm_90a")
    kernels = {name: text for name, text in sass.items() if name.startswith("void fused_rnn::cuda::recurrence_kernel<")}
    assert kernels
    for name, text in kernels.items():
        opcodes = instructions(text)
        math = int(re.search(r"ProductEngine<\(fused_rnn::cuda::Math\)(\d)", name).group(1))
        assert any(op.startswith(MATH_OPCODES[math]) for op in opcodes), f"{name}: no {MATH_OPCODES[math]}"
        assert not any(op.startswith(("LDL", "STL")) for op in opcodes), f"{name}: local memory"


def test_headers_compile_alone(tmp_path):
    """Each header includes what it needs, and none includes torch."""
    for header in HEADERS:
        with open(header) as file:
            torch_includes = re.findall(r'#include\s*[<"](?:torch|ATen|c10)/[^>"]*', file.read())
        assert not torch_includes, f"{header}: {torch_includes}"
        unit = tmp_path / (os.path.basename(header) + ".cu")
        unit.write_text(f'#include "{header}"\n')
        _compile(["-std=c++17", *EXTENSION_FLAGS, ARCHS[0], "-c", str(unit), "-o", str(tmp_path / "out.o")],
                 str(tmp_path))


def _defined_cuda_functions(objects: list[str]) -> set[str]:
    result = subprocess.run(["nm", "-C", "--defined-only", *objects], capture_output=True, text=True, check=True)
    return {line.split(" ", 2)[2] for line in result.stdout.splitlines() if " fused_rnn::cuda::" in line}


@pytest.mark.parametrize("source", API_FILES, ids=os.path.basename)
def test_api_layer_compiles_against_torch_headers(source, tmp_path, reports):
    includes = torch.utils.cpp_extension.include_paths()
    # A torch build without CUDA ships c10/cuda without the header its CMake build generates.
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any(os.path.exists(os.path.join(path, generated)) for path in includes):
        (tmp_path / os.path.dirname(generated)).mkdir(parents=True)
        (tmp_path / generated).write_text("#pragma once\n")
        includes = [*includes, str(tmp_path)]
    flags = [f"-I{path}" for path in [*includes, sysconfig.get_paths()["include"]]]
    _compile(["-std=c++20", "-x", "c++", *flags, "-c", source, "-o", str(tmp_path / "out.o")], str(tmp_path))
    plain_objects = []  # the plain C++ sources beside the kernels (planners), as the extension builds them
    for plain in sorted(set(glob.glob(os.path.join(CUDA_DIR, "*.cpp"))) - set(API_FILES)):
        plain_objects.append(str(tmp_path / (os.path.basename(plain) + ".o")))
        _compile(["-std=c++17", "-x", "c++", "-c", plain, "-o", plain_objects[-1]], str(tmp_path))
    if shutil.which("nm") is None:
        pytest.skip("no nm to list the objects' symbols")
    needed = subprocess.run(["nm", "-C", "--undefined-only", str(tmp_path / "out.o")], capture_output=True,
                            text=True, check=True).stdout
    called = {line.split("U ", 1)[1] for line in needed.splitlines() if "U fused_rnn::cuda::" in line}
    defined = _defined_cuda_functions([str(r.object_path) for r in reports.values()] + plain_objects)
    assert called and called <= defined, sorted(called - defined)


TOOLCHAIN_PROBE = r"""
#include <cuda_fp16.h>
#include <mma.h>
template <int N> __global__ void shared_copy(float* x) {
  __shared__ float s[N]; int i = threadIdx.x; s[i] = x[i]; __syncthreads(); x[i] = s[(i + 1) % N];
}
template __global__ void shared_copy<128>(float*);
__global__ void local_array(float* x, int k) {
  float a[256]; for (int i = 0; i < 256; ++i) a[i] = x[i]; a[k & 255] = 0.f; for (int i = 0; i < 256; ++i) x[i] = a[i];
}
__global__ void tensor_core(const half* a, const half* b, float* c) {
  using namespace nvcuda::wmma;
  fragment<matrix_a, 16, 16, 16, half, row_major> fa;
  fragment<matrix_b, 16, 16, 16, half, col_major> fb;
  fragment<accumulator, 16, 16, 16, float> fc;
  fill_fragment(fc, 0.f); load_matrix_sync(fa, a, 16); load_matrix_sync(fb, b, 16);
  mma_sync(fc, fa, fb, fc); store_matrix_sync(c, fc, 16, mem_row_major);
}
"""


def test_toolchain_reads_resources_and_sass(tmp_path):
    """tests/cuda_toolchain.py, which the kernel gates rely on, reads what it claims: shared memory,
    a stack frame, barriers, demangled template names, and HMMA in the SASS."""
    source = tmp_path / "probe.cu"
    source.write_text(TOOLCHAIN_PROBE)
    report = compile_cu(source, tmp_path, archs=("90a", "80"))
    assert len(report.kernels) == 6
    (shared,) = report.find("shared_copy<128>", "sm_90a")
    assert (shared.shared_bytes, shared.barriers, shared.stack_bytes) == (512, 1, 0)
    (local,) = report.find("local_array", "sm_90a")
    assert local.stack_bytes >= 1024
    if CUOBJDUMP is None:
        pytest.skip("no cuobjdump (neither in the CUDA toolkit nor in the triton wheel)")
    sass = disassemble(report.object_path, "sm_90a")
    assert len(sass) == 3 and disassemble(report.object_path, "sm_80").keys() == sass.keys()
    (tensor_core,) = [text for name, text in sass.items() if name.startswith("tensor_core")]
    assert any(op.startswith("HMMA") for op in instructions(tensor_core))
    (local_sass,) = [text for name, text in sass.items() if name.startswith("local_array")]
    assert any(op.startswith(("STL", "LDL")) for op in instructions(local_sass))
