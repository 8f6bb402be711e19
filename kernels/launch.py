"""How the recurrence kernels are launched: tile sizes, dot precision, step or persistent mode.

Every kernel walks a range of *phases* [k_start, k_stop) (a phase is one time step, or for the
backward kernels one step plus folding the previous step's gate gradients into dh) and ends each
phase at a grid barrier when PERSISTENT. The modes differ only in the loop bounds and that
barrier:

- step mode (default): one launch per phase, k_stop = k_start + 1; the launch boundary is the
  barrier. Always legal; the only mode the Triton interpreter can run.
- single-program mode: when the grid is one program, it runs every phase in one launch and needs
  no barrier (the loop of the persistent mode without its barrier); used on every device.
- persistent mode (FUSED_RNN_TRITON_PERSISTENT=1, CUDA only): one launch for all phases, with
  `kernels.barrier.grid_barrier` between them. Used only when the grid is no larger than the
  number of SMs, so that every program is resident (otherwise the programs spinning at the barrier
  could wait forever for one that never gets an SM); falls back to step mode when it is larger.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Triton decides when our kernels are defined (this import) whether they run in its interpreter.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
PERSISTENT_VARIABLE = "FUSED_RNN_TRITON_PERSISTENT"

MIN_BLOCK = 16  # tl.dot needs every tile dimension >= 16
MAX_BLOCK_B = 64
MAX_BLOCK_H = 128
# The interpreter runs programs one after another, each op in Python: tiles small enough to split
# the test sizes over several programs (rows and units), few enough programs to stay fast.
INTERPRETER_BLOCK_B = 16
INTERPRETER_BLOCK_H = 32

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def block_size(n: int) -> int:
    """The power-of-two tile extent covering n elements (at least MIN_BLOCK)."""
    return max(MIN_BLOCK, triton.next_power_of_2(n))


def persistent_requested() -> bool:
    return os.environ.get(PERSISTENT_VARIABLE, "0") == "1"


def _resident_programs(device: torch.device) -> int:
    """How many programs are surely resident at once: one per SM."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@dataclass(frozen=True)
class LaunchPlan:
    """Tiles and mode of one recurrence: grid = (hidden blocks, batch blocks)."""

    block_b: int
    block_h: int
    grid: tuple[int, int]
    persistent: bool
    dot_dtype: object  # the tl dtype tl.dot operands are cast to
    precision: str  # tl.dot input_precision for float32 operands
    num_warps: int

    def meta(self) -> dict:
        """The constexpr and launch arguments every recurrence kernel takes."""
        return {
            "BLOCK_B": self.block_b,
            "BLOCK_H": self.block_h,
            "DOT_DTYPE": self.dot_dtype,
            "PRECISION": self.precision,
            "num_warps": self.num_warps,
        }


def plan_launch(
    batch: int, hidden: int, reduction: int, xw: torch.Tensor, allow_persistent: bool = True
) -> LaunchPlan:
    """Tiles for a recurrence over `batch` rows and `hidden` units whose recurrent GEMM reduces over
    `reduction` elements, on xw's dtype and device. The interpreter gets float32 dots (it computes
    bfloat16 dots wrongly)."""
    block_b = min(INTERPRETER_BLOCK_B if INTERPRETING else MAX_BLOCK_B, block_size(batch))
    block_h = INTERPRETER_BLOCK_H if INTERPRETING else MIN_BLOCK
    batch_blocks = triton.cdiv(batch, block_b)
    persistent = (
        allow_persistent and persistent_requested() and not INTERPRETING and xw.device.type == "cuda"
    )
    if persistent:
        resident = _resident_programs(xw.device)
        while block_h < MAX_BLOCK_H and triton.cdiv(hidden, block_h) * batch_blocks > resident:
            block_h *= 2
        persistent = triton.cdiv(hidden, block_h) * batch_blocks <= resident
    fp32_tf32 = xw.dtype == torch.float32 and xw.is_cuda and torch.backends.cuda.matmul.allow_tf32
    tile_elements = block_size(reduction) * block_h
    return LaunchPlan(
        block_b=block_b,
        block_h=block_h,
        grid=(triton.cdiv(hidden, block_h), batch_blocks),
        persistent=persistent,
        dot_dtype=tl.float32 if INTERPRETING else _TL_DTYPES[xw.dtype],
        precision="tf32" if fp32_tf32 and not INTERPRETING else "ieee",
        num_warps=8 if tile_elements >= 64 * 128 else 4,
    )


def _launch(kernel, plan: LaunchPlan, barrier, k_start: int, k_stop: int, args: tuple, meta: dict) -> None:
    """One launch over phases [k_start, k_stop); a barrier counter makes it persistent."""
    kernel[plan.grid](
        *args, barrier, k_start, k_stop, PERSISTENT=barrier is not None, **plan.meta(), **meta
    )


def launch_phase(kernel, plan: LaunchPlan, phase: int, args: tuple, meta: dict) -> None:
    """Step mode: one launch running phase `phase` only."""
    if 0 not in plan.grid:
        _launch(kernel, plan, None, phase, phase + 1, args, meta)


def run_phases(kernel, plan: LaunchPlan, phases: int, args: tuple, meta: dict) -> None:
    """Run phases 0..phases-1 of `kernel` in the plan's mode.

    `args` are the kernel's runtime arguments up to (not including) barrier, k_start, k_stop;
    `meta` its kernel-specific constexprs.
    """
    if 0 in plan.grid:
        return
    if plan.grid == (1, 1):
        _launch(kernel, plan, None, 0, phases, args, meta)
    elif plan.persistent:
        counter = torch.zeros(1, dtype=torch.int32, device=args[0].device)
        _launch(kernel, plan, counter, 0, phases, args, meta)
    else:
        for phase in range(phases):
            launch_phase(kernel, plan, phase, args, meta)
