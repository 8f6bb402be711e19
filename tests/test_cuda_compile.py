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
