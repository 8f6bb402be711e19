"""tests/cuda_attention_host.cu (the host program over the __host__ __device__ functions and the
planner of the CUDA attention kernels), built by nvcc once per test session, with the flags
torch's extension build gives nvcc.

    output = run_host_program("plan", stdin="0 1 3 32 512 512 256 256 132 232448\\n")
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch.utils.cpp_extension

from cuda_toolchain import NVCC, ROOT

SOURCES = [ROOT / "tests" / "cuda_attention_host.cu", ROOT / "csrc" / "cuda" / "attention_plan.cpp"]


@functools.lru_cache(maxsize=None)
def host_program() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="cuda_attention_host_"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    binary = directory / "cuda_attention_host"
    command = [NVCC, "-std=c++17", "-O2", *torch.utils.cpp_extension.COMMON_NVCC_FLAGS,
               "-gencode=arch=compute_80,code=sm_80", *map(str, SOURCES), "-o", str(binary)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}{result.stderr}"
    return binary


def run_host_program(*arguments: str, stdin: Optional[str] = None) -> str:
    """The program's standard output; AssertionError with its output when it fails."""
    result = subprocess.run([str(host_program()), *arguments], input=stdin, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"cuda_attention_host {' '.join(arguments)}: {result.stdout}{result.stderr}"
    return result.stdout
