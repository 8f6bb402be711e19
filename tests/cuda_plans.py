"""The CUDA recurrence's launch planner as the tests see it: plan_report (csrc/cuda/tests/plan_report.cpp,
plain C++ over csrc/cuda/recurrence_planner.cpp) built with the host compiler, its plans as dicts,
and the names of the kernel instantiations a plan launches.

    program = build_plan_report(tmp_dir)
    (plan,) = plans(program, [("h100", LSTM, FORWARD, BF16_MMA, 16, 768, 768, False)])
    kernel_name(LSTM, FORWARD, plan)   # how the demangled name of its kernel starts
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "csrc" / "cuda"
CXX = shutil.which("g++") or shutil.which("c++")

RNN, LSTM, GRU = range(3)
FORWARD, BACKWARD = range(2)
BF16_MMA, F16_MMA, TF32_MMA, F32_FMA, F64_FMA = range(5)
REGISTERS, SHARED, GLOBAL = range(3)

JUDGED_BATCH = (1, 8, 16, 64, 256)
JUDGED_HIDDEN = (256, 512, 768, 1024)

_CELLS = {RNN: "RnnCell", LSTM: "LstmCell", GRU: "GruCell"}
_PASSES = {FORWARD: "ForwardPass", BACKWARD: "BackwardPass"}


def run(command: list[str], stdin: str = "") -> str:
    result = subprocess.run(command, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}{result.stderr}"
    return result.stdout


def build_plan_report(out_dir: Path) -> Path:
    """Compiles plan_report into out_dir (needs a C++17 compiler)."""
    out = Path(out_dir) / "plan_report"
    run([CXX, "-std=c++17", "-O2", "-o", str(out), str(CUDA_DIR / "tests" / "plan_report.cpp"),
         str(CUDA_DIR / "recurrence_planner.cpp")])
    return out


def plans(program: Path, problems: list[tuple]) -> list[dict]:
    """(device "h100"/"h200", cell, direction, math, B, H, P, projected) per problem -> its plan."""
    lines = "".join(" ".join(str(int(v) if isinstance(v, bool) else v) for v in p) + "\n" for p in problems)
    return [json.loads(line) for line in run([str(program)], lines).splitlines()]


def kernel_name(cell: int, direction: int, plan: dict) -> str:
    """The demangled name of the recurrence kernel instantiation that runs `plan`, up to its
    parameter list: "void fused_rnn::cuda::recurrence_kernel<Pass, Engine >("."""
    ns = "fused_rnn::cuda::"
    math = f"({ns}Math){plan['math']}"
    engine = f"{ns}ProductEngine<{math}, ({ns}Regime){plan['regime']}, {plan['m_tiles']}, {max(plan['k_capacity'], 1)}>"
    return f"void {ns}recurrence_kernel<{ns}{_PASSES[direction]}<{ns}{_CELLS[cell]}, {math}>, {engine} >("
