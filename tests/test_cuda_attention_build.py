"""The CUDA attention kernels as nvcc builds them, checked without a GPU: csrc/cuda/attention_forward.cu
and attention_backward.cu compiled for sm_90a and sm_80 with the flags torch's extension build
gives nvcc, read through tests/cuda_toolchain.py (ptxas's resource report, cuobjdump's SASS).

- Every kernel of every dtype and score is built for both architectures, with no spills, no stack
  frame, no static shared memory (the planner sizes all of it: tests/test_cuda_attention_host.py)
  and at most the registers that two blocks of four warps per multiprocessor leave a thread
  (kAttentionMaxWarps, kAttentionBlocksPerProcessor in csrc/cuda/attention_plan.h).
- SASS: no local memory (LDL/STL) anywhere; the tile loops of the half types run their score and
  context products as HMMA, float32 and float64 as exact FFMA / DFMA (no HMMA: no tf32); the
  additive score's tanh is MUFU.TANH exactly where the dtype traits say (bfloat16, see
  tests/test_cuda_attention_tanh.py).
Skipped without nvcc; the SASS checks also without cuobjdump."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch.utils.cpp_extension

from cuda_attention_programs import host_program, run
from cuda_toolchain import CUDA_DIR, CUOBJDUMP, NVCC, compile_cu, disassemble, instructions

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

SOURCES = ("attention_forward.cu", "attention_backward.cu")
ARCHS = ("90a", "80")
TILE_KERNELS = ("attention_forward_kernel", "attention_query_pass_kernel", "attention_key_pass_kernel",
                "attention_value_pass_kernel")
HELPER_KERNELS = ("combine_splits_kernel", "normalize_weights_kernel")
SCALARS = {"__half": "float16", "__nv_bfloat16": "bfloat16", "float": "float32", "double": "float64"}
SCORES = {"0": "additive", "1": "dot"}  # fused_rnn::cuda::AttentionScore
_NAME = re.compile(r"(\w+_kernel)<(\w+)(?:, \(fused_rnn::cuda::AttentionScore\)(\d))?>")


def _plan_constant(name: str) -> int:
    text = (CUDA_DIR / "attention_plan.h").read_text()
    return int(re.search(rf"constexpr int32_t {name} = (\d+);", text).group(1))


REGISTER_BUDGET = 65536 // (32 * _plan_constant("kAttentionMaxWarps") * _plan_constant("kAttentionBlocksPerProcessor"))


def _kernel(name: str) -> tuple[str, str, str]:
    """(kernel, dtype, score or "") of a demangled kernel name."""
    match = _NAME.search(name)
    assert match, name
    return match.group(1), SCALARS[match.group(2)], SCORES.get(match.group(3) or "", "")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cuda_attention_build")
    flags = torch.utils.cpp_extension.COMMON_NVCC_FLAGS
    with ThreadPoolExecutor(max_workers=len(SOURCES)) as pool:
        built = pool.map(lambda source: compile_cu(CUDA_DIR / source, directory, ARCHS, flags), SOURCES)
        return dict(zip(SOURCES, built))


def _kernels(reports):
    return [(kernel, resources) for report in reports.values() for (_, _), resources in report.kernels.items()
            for kernel in [_kernel(resources.name)]]


def test_every_kernel_is_built_for_both_architectures(reports):
    built = {(kernel, resources.arch) for kernel, resources in _kernels(reports)}
    expected = {((name, dtype, score), f"sm_{arch}") for name in TILE_KERNELS for dtype in SCALARS.values()
                for score in SCORES.values() for arch in ARCHS}
    expected |= {((name, dtype, ""), f"sm_{arch}") for name in HELPER_KERNELS for dtype in SCALARS.values()
                 for arch in ARCHS}
    assert built == expected


def test_no_spills_no_stack_no_static_shared_memory_registers_within_budget(reports):
    bad = [resources for _, resources in _kernels(reports)
           if resources.spill_stores or resources.spill_loads or resources.stack_bytes or resources.shared_bytes
           or resources.registers > REGISTER_BUDGET]
    assert not bad, "\n".join(map(str, bad))


def _loops(sass: str) -> list[tuple[int, int]]:
    """Address ranges [target, branch] of the backward branches of a SASS listing."""
    loops = []
    for line in sass.splitlines():
        match = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?BRA(?:\.\w+)* (?:\w+, )?0x([0-9a-f]+)", line)
        if match and int(match.group(2), 16) < int(match.group(1), 16):
            loops.append((int(match.group(2), 16), int(match.group(1), 16)))
    return loops


def _in_a_loop(sass: str, opcode_prefix: str) -> bool:
    loops = _loops(sass)
    for line in sass.splitlines():
        match = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if match and match.group(2).startswith(opcode_prefix):
            address = int(match.group(1), 16)
            if any(start <= address <= end for start, end in loops):
                return True
    return False


@pytest.mark.parametrize("arch", ARCHS)
def test_sass_tensor_cores_exact_fma_tanh_and_no_local_memory(reports, arch):
    if CUOBJDUMP is None:
        pytest.skip("no cuobjdump (neither in the CUDA toolkit nor in the triton wheel)")
    traits = json.loads(run(host_program(), "traits"))
    problems = []
    for report in reports.values():
        for name, sass in disassemble(report.object_path, f"sm_{arch}").items():
            kernel, dtype, score = _kernel(name)
            ops = instructions(sass)
            if any(op.startswith(("LDL", "STL")) for op in ops):
                problems.append(f"{name}: local memory")
            if kernel not in TILE_KERNELS:
                continue
            if traits[dtype]["tensor_cores"] != _in_a_loop(sass, "HMMA"):
                problems.append(f"{name}: HMMA in its loops: {_in_a_loop(sass, 'HMMA')}")
            fma = {"float32": "FFMA", "float64": "DFMA"}.get(dtype)
            if fma and not _in_a_loop(sass, fma):
                problems.append(f"{name}: no {fma} in its loops")
            tanh = any(op.startswith("MUFU.TANH") for op in ops)
            if tanh != (score == "additive" and traits[dtype]["tanh"] == "hardware"):
                problems.append(f"{name}: MUFU.TANH {tanh}")
    assert not problems, "\n".join(problems)
