"""How the recurrence kernels are launched: the plan, persistent or one launch per phase.

Every kernel walks a range of *phases* [k_start, k_stop) (a phase is one time step, or half of
one: see each kernel); a phase reads the state the programs of its batch block wrote in the
previous one, waiting for its tagged words (kernels.exchange; float64: a grid barrier between the
phases, kernels.barrier). Two modes run the same compiled kernel:

- persistent (the default on CUDA): one launch for all phases, launched cooperatively
  (`launch_cooperative_grid=True`), used when the compiled kernel's own occupancy (its registers,
  shared memory and warps against the device's per-SM limits: plan.programs_per_sm) makes the
  whole grid resident. The cooperative launch refuses a grid that cannot be resident, so no
  program can wait for one that never runs, even beside other kernels (NCCL, MPS).
  Where only some of its batch blocks (grid columns, which never exchange state) are resident,
  they run in several persistent launches one after another, each over `first_block` onwards.
- one launch per phase, where no candidate plan keeps even one batch block resident: each launch
  finds its input complete. Slower (a launch per phase); a warning names the shape, once. Setting
  FUSED_RNN_TRITON_PERSISTENT=0 asks for this mode everywhere (without a warning).

The planner (kernels.plan) proposes candidates; on CUDA the first whose compiled kernel fits (at
most SPILL_BOUND_BYTES of local memory, shared memory within the limit, resident grid) is used
(choose_plan; tests/test_triton_compile.py makes the same choice for sm_90 without a GPU). Triton's interpreter (a CPU
tensor, TRITON_INTERPRET=1) runs programs one after another, so it runs persistent launches (one per
batch block) only when each batch block is one program, and one launch per phase otherwise.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
import triton.language as tl

from . import plan as planner

# Triton decides when our kernels are defined (at import) whether they run in its interpreter.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
# "0": one launch per phase on CUDA even where the grid is resident (read at every launch).
PERSISTENT_VARIABLE = "FUSED_RNN_TRITON_PERSISTENT"

TL_DTYPES = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32, "fp64": tl.float64}
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
STATIC_SHARED = 1024  # static shared memory of a compiled kernel, beside its dynamic `shared`
RUNTIME_CANDIDATES = 3  # compiled at most per shape before falling back to one launch per phase
# ptxas keeps a few values of the step loop in local memory (stack) in some plans, far below the
# register cap (8-16 bytes, L1-resident); more than this counts as spilling.
SPILL_BOUND_BYTES = 16
# A kernel without local memory is preferred to one with some (within the bound) if its estimated
# step is at most this much slower.
LOCAL_FREE_MARGIN = 1.05
# Resident blocks per SM by compute capability where it is not 32.
_BLOCKS_PER_SM = {(7, 5): 16, (8, 6): 16, (8, 7): 16, (8, 9): 24, (12, 0): 24}
# The interpreter runs programs one after another: small tiles (several programs at the test
# sizes), and a device whose limits never bind.
INTERPRETER_LIMITS = planner.DeviceLimits("Triton interpreter", sms=1, blocks_per_sm=1 << 20,
                                          threads_per_sm=1 << 30, registers_per_sm=1 << 40,
                                          shared_per_sm=1 << 40, shared_per_block=1 << 30)


def device_limits(device: torch.device) -> planner.DeviceLimits:
    """The per-SM limits of a CUDA device (or the interpreter's)."""
    if device.type != "cuda":
        return INTERPRETER_LIMITS
    props = torch.cuda.get_device_properties(device)
    return planner.DeviceLimits(
        name=props.name,
        sms=props.multi_processor_count,
        registers_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
        shared_per_sm=getattr(props, "shared_memory_per_multiprocessor", 233472),
        shared_per_block=getattr(props, "shared_memory_per_block_optin", 232448),
        threads_per_sm=getattr(props, "max_threads_per_multi_processor", 2048),
        blocks_per_sm=_BLOCKS_PER_SM.get((props.major, props.minor), 32),
        l2_bytes=getattr(props, "L2_cache_size", 50 * 2**20),
    )


def plans(cell: str, direction: str, batch: int, hidden: int, state: int, projected: bool,
          like: torch.Tensor) -> list:
    """The planner's candidates for a recurrence on `like`'s dtype and device."""
    tf32 = like.dtype == torch.float32 and like.is_cuda and torch.backends.cuda.matmul.allow_tf32
    return planner.recurrence_plans(
        cell, direction, batch, hidden, state, projected, DTYPE_NAMES[like.dtype],
        device_limits(like.device), tf32=tf32, interpreting=INTERPRETING,
    )


def kernel_meta(kernel, plan: planner.Plan, meta: dict) -> dict:
    """The plan's constexprs that `kernel` takes, its own `meta`, and num_warps."""
    values = {n: TL_DTYPES.get(v, v) if n in ("DOT", "ACC") else v for n, v in plan.meta().items()}
    values = {n: v for n, v in values.items() if n in kernel.arg_names}
    return {**values, **meta, "num_warps": plan.num_warps}


def _specialisation(value) -> object:
    """What of a launch argument Triton specialises on (the key of a compiled-plan choice)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if isinstance(value, int):
        return value == 1, value % 16 == 0
    return value


_CHOICES: dict = {}
_WARNED: set = set()
# (plan, batch blocks per persistent launch; 0: one launch per phase) of the latest launch of
# each shape, as run_phases names it.
LAST_PLANS: dict = {}


def choose_plan(candidates, resources, limits: planner.DeviceLimits) -> tuple:
    """(plan, batch blocks per persistent launch) of the first RUNTIME_CANDIDATES candidates:
    the first whose compiled kernel has at most SPILL_BOUND_BYTES of local memory and keeps its
    whole grid resident (blocks = plan.grid[1]), or a later one without local memory whose
    estimated step is within LOCAL_FREE_MARGIN of it; else, the same way, one that keeps at least
    one batch block resident (its batch blocks then run in several persistent launches). Else
    (plan, 0), one launch per phase, for the one that fits a block with the least local memory.
    `resources(plan)` -> (registers, local memory bytes per thread, shared memory bytes) of the
    plan's compiled kernel, or None where it does not compile or load. The compile gate makes the
    same choice for sm_90."""
    viable = []  # (plan, local memory bytes, batch blocks per launch), in the planner's order
    for plan in candidates[:RUNTIME_CANDIDATES]:
        found = resources(plan)
        if found is None:
            continue
        registers, local_bytes, shared = found
        per_sm = planner.programs_per_sm(limits, registers, shared, plan.num_warps)
        if per_sm:
            viable.append((plan, local_bytes, planner.blocks_per_launch(plan, per_sm, limits)))
            if local_bytes == 0 and viable[-1][2] == plan.grid[1]:
                break  # the best there can be: compile no further candidate
    if not viable:
        raise RuntimeError(f"no launch plan fits {limits.name}: "
                           f"{[p.describe() for p in candidates[:RUNTIME_CANDIDATES]]}")
    for whole_grid in (True, False):
        persistent = [(plan, local_bytes, blocks) for plan, local_bytes, blocks in viable
                      if local_bytes <= SPILL_BOUND_BYTES and blocks and (blocks == plan.grid[1] or not whole_grid)]
        if persistent:
            first = persistent[0]
            margin = LOCAL_FREE_MARGIN * planner.step_estimate_us(first[0], limits=limits)
            local_free = [v for v in persistent if v[1] == 0 and planner.step_estimate_us(v[0], limits=limits) <= margin]
            plan, _, blocks = local_free[0] if local_free else first
            return plan, blocks
    return min(viable, key=lambda v: v[1])[0], 0


def _choose(kernel, candidates: list, phases: int, args: tuple, meta: dict) -> tuple:
    """choose_plan on this CUDA device, from the kernels Triton compiles for it (cached)."""
    device = args[0].device
    key = (kernel.__name__, device.index, tuple(candidates[:RUNTIME_CANDIDATES]),
           tuple(sorted(meta.items())), tuple(_specialisation(a) for a in args))
    if key not in _CHOICES:
        counters = torch.zeros(1, dtype=torch.int32, device=device)

        def resources(plan):
            try:
                compiled = kernel.warmup(*args, counters, 0, phases, 0, grid=plan.grid,
                                         **kernel_meta(kernel, plan, meta), launch_cooperative_grid=True)
                compiled._init_handles()
            except Exception:  # OutOfResources and friends: this candidate does not fit
                return None
            # Triton's n_spills is the local memory per thread / 4
            return compiled.n_regs, 4 * compiled.n_spills, compiled.metadata.shared + STATIC_SHARED

        _CHOICES[key] = choose_plan(candidates, resources, device_limits(device))
    return _CHOICES[key]


def run_phases(kernel, candidates: list, phases: int, args: tuple, meta: dict, shape: str) -> None:
    """Run phases 0..phases-1 of `kernel` with the best fitting candidate plan.

    `args` are the kernel's runtime arguments up to (not including) barrier, k_start, k_stop,
    first_block; `meta` its kernel-specific constexprs; `shape` names the problem in the fallback
    warning.
    """
    if 0 in candidates[0].grid or phases == 0:
        return
    device = args[0].device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if device.type == "cuda":
            plan, blocks = _choose(kernel, candidates, phases, args, meta)
            if os.environ.get(PERSISTENT_VARIABLE) == "0":
                blocks = 0
            elif blocks == 0 and shape not in _WARNED:
                _WARNED.add(shape)
                warnings.warn(
                    f"fused_rnn triton backend: {shape} runs one launch per phase ({phases} launches): "
                    f"no candidate plan keeps even one batch block resident on {device_limits(device).name} "
                    f"({plan.describe()})",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            plan = candidates[0]
            blocks = 1 if plan.grid[0] == 1 else 0
        LAST_PLANS[shape] = (plan, blocks)
        values = kernel_meta(kernel, plan, meta)
        if blocks:
            for first_block in range(0, plan.grid[1], blocks):
                grid = (plan.grid[0], min(blocks, plan.grid[1] - first_block))
                counters = torch.zeros(grid[1], dtype=torch.int32, device=device)
                kernel[grid](*args, counters, 0, phases, first_block, **values,
                             launch_cooperative_grid=device.type == "cuda")
        else:
            counters = torch.zeros(plan.grid[1], dtype=torch.int32, device=device)
            for phase in range(phases):
                kernel[plan.grid](*args, counters, phase, phase + 1, 0, **values)
