"""The CUDA sources of the native backend compile without a GPU: every csrc/cuda/*.cu with bare
nvcc for sm_90a (H100) and sm_80, the plain CUDA C++ headers on their own, and the torch-facing
csrc/cuda/*_api.cpp with the host compiler against torch's headers (which a CPU-only build of the
extension never compiles). Skipped without nvcc."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch.utils.cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

ARCHS = ["-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_80,code=sm_80"]
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
HEADERS = sorted(glob.glob(os.path.join(CUDA_DIR, "*.h")))
API_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*_api.cpp")))


def _compile(arguments: list[str], cwd: str) -> None:
    result = subprocess.run([NVCC, *arguments], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"nvcc {' '.join(arguments)}\n{result.stdout}{result.stderr}"


def test_there_are_cuda_sources():
    assert CU_FILES and HEADERS and API_FILES


@pytest.mark.parametrize("source", CU_FILES, ids=os.path.basename)
def test_cu_file_compiles_for_sm90a_and_sm80(source, tmp_path):
    _compile(["-std=c++17", "-O3", *ARCHS, "-c", source, "-o", str(tmp_path / "out.o")], str(tmp_path))


def test_headers_compile_alone(tmp_path):
    """Each header includes what it needs, and none includes torch."""
    for header in HEADERS:
        with open(header) as file:
            torch_includes = re.findall(r'#include\s*[<"](?:torch|ATen|c10)/[^>"]*', file.read())
        assert not torch_includes, f"{header}: {torch_includes}"
        unit = tmp_path / (os.path.basename(header) + ".cu")
        unit.write_text(f'#include "{header}"\n')
        _compile(["-std=c++17", ARCHS[0], "-c", str(unit), "-o", str(tmp_path / "out.o")], str(tmp_path))


@pytest.mark.parametrize("source", API_FILES, ids=os.path.basename)
def test_api_layer_compiles_against_torch_headers(source, tmp_path):
    includes = torch.utils.cpp_extension.include_paths()
    # A torch build without CUDA ships c10/cuda without the header its CMake build generates.
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any(os.path.exists(os.path.join(path, generated)) for path in includes):
        (tmp_path / os.path.dirname(generated)).mkdir(parents=True)
        (tmp_path / generated).write_text("#pragma once\n")
        includes = [*includes, str(tmp_path)]
    flags = [f"-I{path}" for path in [*includes, sysconfig.get_paths()["include"]]]
    _compile(["-std=c++20", "-x", "c++", *flags, "-c", source, "-o", str(tmp_path / "out.o")], str(tmp_path))


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
    from cuda_toolchain import CUOBJDUMP, compile_cu, disassemble, instructions

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
