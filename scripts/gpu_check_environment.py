"""The GPU check's record of the machine: GPU (name, SMs, compute capability, memory), driver, the
CUDA of torch, torch, triton, nvcc, compute-sanitizer, Python, CPU cores and the commit.

    python scripts/gpu_check_environment.py --json environment.json

writes the record as JSON (and prints it). `cuda_device` is false, with `no_device_reason`, when
torch sees no CUDA device; every field that could not be read holds why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's fused_rnn, built or not


def _output(argv: list[str]) -> Optional[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cuda_tool(name: str) -> Optional[str]:
    """The path of a CUDA toolkit program: on PATH, else in $CUDA_HOME/bin or /usr/local/cuda/bin."""
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        candidate = Path(home or "") / "bin" / name
        if home and candidate.is_file():
            return str(candidate)
    return None


def tool_version(name: str) -> str:
    """The release line of `name --version` ("Cuda compilation tools, release 13.0, V13.0.88") and
    where the program is, or why there is none."""
    path = cuda_tool(name)
    if path is None:
        return "not found"
    text = _output([path, "--version"])
    if not text:
        return f"{path}: --version failed"
    lines = [line for line in text.splitlines() if line.strip()]
    release = next((line for line in lines if "release" in line.lower() or "version" in line.lower()), lines[-1])
    return f"{release.strip()} ({path})"


def driver_version() -> str:
    text = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return text.splitlines()[0] if text else "unknown (nvidia-smi did not answer)"


def torch_facts() -> dict:
    try:
        import torch
    except ImportError as error:
        return {"torch": f"not importable ({error})", "cuda_device": False,
                "no_device_reason": f"torch is not importable ({error})"}
    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda or "none (CPU build)"}
    if not torch.cuda.is_available():
        facts.update(cuda_device=False, no_device_reason="torch.cuda.is_available() is False")
        return facts
    properties = torch.cuda.get_device_properties(0)
    major, minor = properties.major, properties.minor
    facts.update(
        cuda_device=True,
        gpu=properties.name,
        gpu_count=torch.cuda.device_count(),
        sm_count=properties.multi_processor_count,
        compute_capability=f"{major}.{minor}",
        memory_gib=round(properties.total_memory / 2**30, 1),
        l2_mib=round(getattr(properties, "L2_cache_size", 0) / 2**20, 1),
        driver=driver_version(),
    )
    return facts


def triton_version() -> str:
    try:
        import triton
    except ImportError as error:
        return f"not importable ({error})"
    return triton.__version__


def commit() -> str:
    """GPU_CHECK_COMMIT when set (for a copy of the checkout without its .git), else the checkout's."""
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    try:
        from fused_rnn.bench.results import commit_id
    except Exception as error:  # a broken checkout is still recorded
        return f"unknown (fused_rnn.bench is not importable: {error})"
    return commit_id() or "unknown (not a git checkout; set GPU_CHECK_COMMIT)"


def environment() -> dict:
    record = {"python": platform.python_version(), "executable": sys.executable, "cpu_cores": os.cpu_count()}
    record.update(torch_facts())
    record.update(
        triton=triton_version(),
        nvcc=tool_version("nvcc"),
        compute_sanitizer=tool_version("compute-sanitizer"),
        commit=commit(),
    )
    return record


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="write the record here")
    args = parser.parse_args(argv)
    record = environment()
    text = json.dumps(record, indent=2)
    Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
