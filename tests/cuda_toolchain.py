"""What the CUDA toolchain says about a .cu file, without a GPU: nvcc's resource report per kernel
(`-Xptxas -v`: registers, shared memory, stack frame, spill bytes) and the SASS of each function
(cuobjdump, from the CUDA toolkit or the copy inside the triton wheel).

    report = compile_cu("csrc/cuda/lstm.cu", tmp_path, arch="90a")
    for kernel in report.kernels.values():
        assert kernel.spill_stores == kernel.spill_loads == 0, kernel
    sass = disassemble(report.object_path)   # {demangled function name: SASS text}

Used by the tests of csrc/cuda (build gates, SASS checks); nvcc's messages are returned whole
when a compile fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "csrc" / "cuda"
NVCC = shutil.which("nvcc")


def _triton_tool(name: str) -> Optional[str]:
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else None


CUOBJDUMP = shutil.which("cuobjdump") or _triton_tool("cuobjdump")
CXXFILT = shutil.which("c++filt")


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reports for one entry function compiled for one architecture."""

    name: str  # demangled
    arch: str  # e.g. "sm_90a"
    registers: int
    shared_bytes: int  # static shared memory
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    barriers: int


@dataclass
class CompileReport:
    object_path: Path
    log: str
    kernels: dict[tuple[str, str], KernelResources] = field(default_factory=dict)  # (name, arch) ->

    def for_arch(self, arch: str) -> list[KernelResources]:
        return [k for (_, a), k in self.kernels.items() if a == arch]

    def find(self, substring: str, arch: str) -> list[KernelResources]:
        """The kernels of `arch` whose demangled name contains `substring`."""
        return [k for k in self.for_arch(arch) if substring in k.name]


def demangle(names: Sequence[str]) -> list[str]:
    if not names or CXXFILT is None:
        return list(names)
    result = subprocess.run([CXXFILT], input="\n".join(names), capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def arch_flags(arch: str) -> list[str]:
    """'90a' -> the -gencode flag compiling SASS for sm_90a."""
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}"]


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers")
_SHARED = re.compile(r"(\d+) bytes smem")
_BARRIERS = re.compile(r"used (\d+) barriers")


def parse_ptxas_report(log: str) -> dict[tuple[str, str], KernelResources]:
    """The per-entry-function blocks of `nvcc -Xptxas -v` output -> {(demangled name, arch): resources}."""
    entries: list[tuple[str, str, dict]] = []
    current: Optional[dict] = None
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = {"registers": 0, "shared": 0, "stack": 0, "stores": 0, "loads": 0, "barriers": 0}
            entries.append((entry.group(1), entry.group(2), current))
            continue
        if current is None:
            continue
        frame = _FRAME.search(line)
        if frame:
            current["stack"], current["stores"], current["loads"] = map(int, frame.groups())
        usage = _USAGE.search(line)
        if usage:
            current["registers"] = int(usage.group(1))
            shared = _SHARED.search(line)
            current["shared"] = int(shared.group(1)) if shared else 0
            barriers = _BARRIERS.search(line)
            current["barriers"] = int(barriers.group(1)) if barriers else 0
    names = demangle([mangled for mangled, _, _ in entries])
    return {
        (name, arch): KernelResources(
            name, arch, v["registers"], v["shared"], v["stack"], v["stores"], v["loads"], v["barriers"]
        )
        for name, (_, arch, v) in zip(names, entries)
    }


def compile_cu(
    source: os.PathLike | str,
    out_dir: os.PathLike | str,
    archs: Sequence[str] = ("90a",),
    extra_flags: Sequence[str] = (),
    timeout: float = 600,
) -> CompileReport:
    """nvcc -c `source` for each architecture in `archs` with the resource report; raises
    AssertionError with nvcc's output when the compile fails."""
    if NVCC is None:
        raise RuntimeError("nvcc is not installed")
    out = Path(out_dir) / (Path(source).stem + ".o")
    flags = [flag for arch in archs for flag in arch_flags(arch)]
    command = [NVCC, "-std=c++17", "-O3", "-Xptxas", "-v", *flags, *extra_flags, "-c", str(source), "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=str(out_dir))
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)}\n{log}"
    return CompileReport(out, log, parse_ptxas_report(log))


_FUNCTION = re.compile(r"^\s*Function : (\S+)\s*$")
_ARCH = re.compile(r"^\s*arch = (sm_\w+)\s*$")


def disassemble(object_path: os.PathLike | str, arch: str = "sm_90a") -> dict[str, str]:
    """{demangled function name: its SASS} of every function compiled for `arch` in an object file
    or executable."""
    if CUOBJDUMP is None:
        raise RuntimeError("cuobjdump is not installed (nor in the triton wheel)")
    result = subprocess.run([CUOBJDUMP, "-sass", str(object_path)], capture_output=True, text=True, check=True)
    functions: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    section_arch = None
    for line in result.stdout.splitlines():
        arch_line = _ARCH.match(line)
        if arch_line:
            section_arch, current = arch_line.group(1), None
            continue
        match = _FUNCTION.match(line)
        if match:
            current = functions.setdefault(match.group(1), []) if section_arch == arch else None
            continue
        if current is not None:
            current.append(line)
    mangled = list(functions)
    return {name: "\n".join(functions[m]) for name, m in zip(demangle(mangled), mangled)}


def instructions(sass: str) -> list[str]:
    """The opcodes of a SASS listing in order (predicates stripped): ['LDG.E', 'HMMA.16816.F32', ...]."""
    opcodes = []
    for line in sass.splitlines():
        match = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if match:
            opcodes.append(match.group(1))
    return opcodes
