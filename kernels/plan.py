"""The launch planner of the recurrence kernels: a plain function of (cell, direction, shape, dtype,
device limits), so that the plans an H100 would get can be computed and compiled on any machine.

A plan fixes a kernel's tiles: BLOCK_B batch columns and BLOCK_U hidden units per program (and
BLOCK_P rows of the projection), the warps and how they split K, whether W stays resident in shared
memory (kernels.product) or is streamed from L2 every step, and the grid (unit blocks, batch
blocks). `recurrence_plans` returns candidates, best first (by the estimates below, among those
that fit by estimated resources: `fits`); kernels.launch takes the first whose compiled kernel
fits the device (its own registers, shared memory and spills: `programs_per_sm`) and runs it
persistent when its grid is resident; where only some of its batch blocks are
(`blocks_per_launch`), the batch blocks run in several persistent launches one after another
(they never exchange state); one launch per phase only where not even one batch block is. tests/test_triton_compile.py
makes that choice for sm_90 at the judged points and corners of the grid and asserts it fits an
H100; tests/test_triton_plan.py checks the estimate over the whole grid.

The per-step estimate (`step_estimate_us`) is a first-principles model with the constants of
`Rates` (H100 SXM; estimates, not measurements): every phase costs the dependent round trip of the
exchanged state through L2 (kernels.exchange: a latency, then its bytes, as tagged words of twice
the value size, over the L2 bandwidth, whole-chip or into one SM), the products (MMA issue or
shared-memory traffic per SM) and the gate math; the largest of bandwidth, MMA and shared-memory
time counts. float64 pays a grid barrier per phase instead of the tags. Weights streamed from L2
(or HBM, when the slices of every batch block exceed the L2) add their bytes.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Optional

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SLOTS = {"rnn": 1, "lstm": 4, "gru": 4}  # gate rows per unit in the forward product (GRU: 3 + 1 unused)
ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}

MIN_TILE = 16  # every tl.dot dimension (and every per-warp K slice) is at least 16
MAX_BLOCK_B = 256
MAX_ROWS = 256  # product rows per program (larger tiles compile slowly and never fit)
INTERPRETER_ROWS = 32
MAX_SPLIT_ACCUMULATOR = 2048  # rows * BLOCK_B of a split product: 64 float32 registers per thread


@dataclass(frozen=True)
class DeviceLimits:
    """Per-SM resources of a CUDA device (defaults: Hopper, compute capability 9.0)."""

    name: str
    sms: int
    registers_per_sm: int = 65536
    registers_per_thread: int = 255
    shared_per_sm: int = 233472  # 228 KB
    shared_per_block: int = 232448  # 227 KB, opt-in
    reserved_shared_per_block: int = 1024  # the system's share of each block
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    l2_bytes: int = 50 * 2**20


H100 = DeviceLimits("NVIDIA H100 SXM", sms=132)
H200 = DeviceLimits("NVIDIA H200", sms=132)


@dataclass(frozen=True)
class Rates:
    """First-principles constants of the step estimate (H100 SXM, estimates)."""

    clock_ghz: float = 1.75
    barrier_us: float = 1.2  # float64: arrive (release after the phase's stores) and poll
    l2_latency_us: float = 0.7  # a dependent read of state just written by other SMs (its tags)
    l2_bytes_per_us: float = 7.0e6  # ~7 TB/s, whole chip
    l2_bytes_per_clock_per_sm: float = 64.0
    hbm_bytes_per_us: float = 3.35e6
    shared_bytes_per_clock: float = 128.0
    # multiply-accumulates per clock per SM: mma.sync for 16-bit and tf32, FFMA/DFMA otherwise
    mac_per_clock: dict = field(
        default_factory=lambda: {"fp16": 1024, "bf16": 1024, "tf32": 512, "fp32": 128, "fp64": 64}
    )
    pointwise_us: float = 0.1  # gate math, masks, per-step stores


RATES = Rates()


@dataclass(frozen=True)
class Plan:
    """Tiles, warps and grid of one recurrence kernel launch (see the module docstring)."""

    cell: str
    direction: str  # "forward" or "backward"
    projected: bool
    block_b: int
    block_u: int
    block_p: int  # projection rows per program (0 without a projection)
    num_warps: int
    split: int  # K split across this many warps (1: Triton spreads the warps over M and N)
    resident: bool
    chunks: tuple  # (K0, K1, K2) of the first product (resident); zeros when streamed
    proj_chunks: tuple  # (J0, J1, J2) of the projection product
    block_k: int  # streamed: K chunk per iteration
    stages: int  # streamed: pipeline depth of the K loop
    grid: tuple
    dot: str  # tl.dot operand dtype: "fp16", "bf16", "fp32", "fp64" (fp64: FMA, no tl.dot)
    precision: str  # tl.dot input_precision of float32 operands: "tf32" or "ieee"
    acc: str  # gate math / accumulation dtype: "fp32" or "fp64"
    products: tuple  # ((rows, K), ...) per program, in phase order

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def phases_per_step(self) -> int:
        return 2 if self.projected else 1

    def meta(self) -> dict:
        """The kernels' plan constexprs (dtype names; kernels.launch turns them into tl dtypes)."""
        return {
            "BLOCK_B": self.block_b,
            "BLOCK_U": self.block_u,
            "BLOCK_P": self.block_p,
            "SPLIT": self.split,
            "RESIDENT": self.resident,
            "K0": self.chunks[0],
            "K1": self.chunks[1],
            "K2": self.chunks[2],
            "J0": self.proj_chunks[0],
            "J1": self.proj_chunks[1],
            "J2": self.proj_chunks[2],
            "BLOCK_K": self.block_k,
            "STAGES": self.stages,
            "FMA": self.dot == "fp64",
            "DOT": self.dot,
            "PRECISION": self.precision,
            "ACC": self.acc,
            "TAGGED": self.acc != "fp64",
        }

    def describe(self) -> str:
        holding = "resident" if self.resident else f"streamed BK{self.block_k}x{self.stages}"
        proj = f" P{self.block_p}" if self.projected else ""
        return (
            f"grid {self.grid[0]}x{self.grid[1]}, B{self.block_b} U{self.block_u}{proj}, "
            f"{self.num_warps} warps split {self.split}, W {holding}, {self.dot}"
        )


def power_of_two_at_least(n: int, floor: int = 1) -> int:
    return max(floor, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@functools.lru_cache(maxsize=None)
def k_chunks(k: int, quantum: int, cap: int = 1 << 30) -> Optional[tuple]:
    """At most three chunks, each a power-of-two multiple of `quantum` no larger than `cap`,
    largest first, covering k with the least excess (then the fewest chunks), or None when three
    chunks of `cap` do not cover k: 768 with quantum 64 -> (512, 256, 0); 100 with 16 ->
    (64, 32, 16); 3072 with 16 and cap 1024 -> (1024, 1024, 1024)."""
    sizes = [quantum << i for i in range(64) if quantum << i <= cap]
    best = None
    for count in (1, 2, 3):
        for parts in itertools.combinations_with_replacement(reversed(sizes), count):
            if sum(parts) >= k and (best is None or (sum(parts), count) < (sum(best), len(best))):
                best = parts
    return None if best is None else tuple(best) + (0,) * (3 - len(best))


def products(cell: str, direction: str, projected: bool, hidden: int, state: int,
             block_u: int, block_p: int) -> tuple:
    """((rows, K), ...): the recurrent products a program computes, in phase order."""
    if direction == "forward":
        gate_product = (SLOTS[cell] * block_u, state)
        return (gate_product, (block_p, hidden)) if projected else (gate_product,)
    if projected:
        return ((block_p, 4 * hidden), (block_u, state))
    return ((block_u, GATES[cell] * hidden),)


def operand_dtype(dtype_name: str, tf32: bool) -> tuple:
    """(tl.dot operand dtype, input precision, accumulation dtype) for inputs of `dtype_name`."""
    if dtype_name == "fp64":
        return "fp64", "ieee", "fp64"
    if dtype_name == "fp32":
        return "fp32", ("tf32" if tf32 else "ieee"), "fp32"
    return dtype_name, "ieee", "fp32"


def programs_per_sm(limits: DeviceLimits, registers: int, shared: int, num_warps: int) -> int:
    """How many programs of a compiled kernel one SM holds at once (CUDA's occupancy rules:
    registers allocated per warp in units of 256, the system's shared memory per block)."""
    if registers > limits.registers_per_thread or shared > limits.shared_per_block:
        return 0
    threads = 32 * num_warps
    registers_per_warp = -(-registers * 32 // 256) * 256
    return min(
        limits.threads_per_sm // threads,
        limits.blocks_per_sm,
        limits.registers_per_sm // (registers_per_warp * num_warps),
        limits.shared_per_sm // (shared + limits.reserved_shared_per_block),
    )


def _accumulator_registers(plan: Plan, rows: int) -> int:
    """float32 registers per thread holding one product's accumulator: every warp holds a whole
    [rows, BLOCK_B] tile when K is split across the warps, a share of it otherwise."""
    share = 1 if plan.split > 1 else plan.num_warps
    return rows * plan.block_b * (2 if plan.acc == "fp64" else 1) // (32 * share)


def estimated_resources(plan: Plan) -> tuple[int, int, int]:
    """(shared memory bytes, registers per thread, largest per-thread staging bytes) the plan's
    kernel is expected to need; the compile gate checks the real numbers.

    Resident: the W slices stay in shared memory; every step stages the state chunk by chunk
    (buffers reused between chunks), and a split product reduces its warps' partial tiles through
    shared memory. Before the time loop the slices pass through registers on their way in.
    Streamed: the K loop's pipeline buffers (STAGES - 1 chunks in flight)."""
    e = ELEMENT_SIZE[plan.dot]
    word = 2 * e if plan.acc != "fp64" else 0  # tagged words are loaded beside their values
    threads = 32 * plan.num_warps
    widest = max(rows for rows, _ in plan.products)
    scratch = (plan.split if plan.split > 1 else 1) * widest * plan.block_b * 4
    accumulators = max(_accumulator_registers(plan, rows) for rows, _ in plan.products)
    if plan.resident:
        weights = sum(rows * sum(chunks) * e for (rows, _), chunks in zip(plan.products, (plan.chunks, plan.proj_chunks)))
        staging = max(c * plan.block_b for chunks in (plan.chunks, plan.proj_chunks) for c in chunks)
        shared = weights + max(staging * e, scratch)
        per_thread = max(weights // threads, staging * (e + word) // threads)
    else:
        stages = plan.stages - 1 if plan.dot != "fp64" else 0  # float64 loads a k at a time
        shared = sum(stages * plan.block_k * (rows + plan.block_b) * e for rows, _ in plan.products) + scratch
        per_thread = max(plan.block_k * (rows * e + plan.block_b * (e + word)) for rows, _ in plan.products) // threads
    # the gate math keeps about eight [BLOCK_U, BLOCK_B] tiles of ACC live (twelve in a backward)
    tiles = 12 if plan.direction == "backward" else 8
    pointwise = tiles * plan.block_u * plan.block_b * (2 if plan.acc == "fp64" else 1) // threads
    return shared, 64 + per_thread // 4 + accumulators + pointwise, per_thread


WEIGHT_BYTES_PER_THREAD = 384  # resident slices pass through registers once: at most 96 of them
STAGING_BYTES_PER_THREAD = 384  # a resident chunk of state (words and values) at a time: 96 registers
REGISTER_BUDGET = 224  # estimated registers per thread a plan may need (255 is the hardware's cap)


def _staging_bytes(plan: Plan) -> int:
    """Bytes per thread of the largest resident chunk of state (tagged: words and values)."""
    e = ELEMENT_SIZE[plan.dot]
    word = 2 * e if plan.acc != "fp64" else 0
    largest = max(c for chunks in (plan.chunks, plan.proj_chunks) for c in chunks)
    return largest * plan.block_b * (e + word) // (32 * plan.num_warps)


def fits_a_block(plan: Plan, limits: DeviceLimits) -> bool:
    """The estimate: shared memory and registers within a block's limits."""
    shared, registers, per_thread = estimated_resources(plan)
    # below 255, and 1/8 below what one block of this many threads may take of an SM's registers
    budget = min(REGISTER_BUDGET, limits.registers_per_sm // (32 * plan.num_warps) * 7 // 8)
    if shared > limits.shared_per_block or registers > budget:
        return False
    if plan.resident and per_thread > WEIGHT_BYTES_PER_THREAD:
        return False
    return not (plan.resident and _staging_bytes(plan) > STAGING_BYTES_PER_THREAD)


def blocks_per_launch(plan: Plan, per_sm: int, limits: DeviceLimits) -> int:
    """How many batch blocks (grid columns, which never exchange state) one persistent launch
    keeps resident at `per_sm` programs per SM: all of them; fewer, when the columns must run in
    several persistent launches one after another; 0 when one column alone exceeds the device.
    (An empty grid, B = 0 or H = 0, launches nothing.)"""
    if 0 in plan.grid:
        return plan.grid[1]
    return min(plan.grid[1], per_sm * limits.sms // plan.grid[0])


def estimated_launches(plan: Plan, limits: DeviceLimits) -> int:
    """Persistent launches per sequence at the estimated occupancy (0: none is resident)."""
    if 0 in plan.grid:
        return 1  # nothing to launch
    if not fits_a_block(plan, limits):
        return 0
    shared, registers, _ = estimated_resources(plan)
    blocks = blocks_per_launch(plan, programs_per_sm(limits, registers, shared, plan.num_warps), limits)
    return -(-plan.grid[1] // blocks) if blocks else 0


def fits(plan: Plan, limits: DeviceLimits) -> bool:
    """The estimate: the plan fits a block and its whole grid is resident (one launch)."""
    return estimated_launches(plan, limits) == 1


def sequence_step_estimate_us(plan: Plan, launches: int, limits: DeviceLimits = H100) -> float:
    """Estimated microseconds per time step of the whole batch when the batch blocks run in
    `launches` persistent launches one after another (step_estimate_us of each launch's grid)."""
    group = replace(plan, grid=(plan.grid[0], -(-plan.grid[1] // launches)))
    return launches * step_estimate_us(group, RATES, limits)


def step_estimate_us(plan: Plan, rates: Rates = RATES, limits: DeviceLimits = H100) -> float:
    """Estimated microseconds per time step on an H100 (see the module docstring)."""
    if plan.programs == 0:
        return 0.0
    e = ELEMENT_SIZE[plan.dot]
    tagged = plan.acc != "fp64"  # tagged words (kernels.exchange): twice the bytes, no barrier
    per_sm = -(-plan.programs // limits.sms)
    # An SM's four sub-partitions (tensor cores, load pipes) are all busy only with >= 4 warps.
    clock = rates.clock_ghz * 1e3 * min(4, per_sm * plan.num_warps) / 4  # busy clocks per us
    mma_rate = rates.mac_per_clock["tf32" if plan.precision == "tf32" else plan.dot]
    total = 0.0
    for (rows, k), chunks in zip(plan.products, (plan.chunks, plan.proj_chunks)):
        k_padded = sum(chunks) if plan.resident else -(-k // plan.block_k) * plan.block_k
        values_bytes = k_padded * plan.block_b * e
        state_bytes = values_bytes * (2 if tagged else 1)  # as read from L2
        weight_bytes = rows * k_padded * e
        read_bytes = state_bytes + (0 if plan.resident else weight_bytes)  # from L2, per program
        streamed = 0 if plan.resident else plan.programs * weight_bytes / plan.grid[1]  # distinct W
        hbm_us = streamed * plan.grid[1] / rates.hbm_bytes_per_us if streamed > limits.l2_bytes else 0.0
        l2_us = max(plan.programs * read_bytes / rates.l2_bytes_per_us,
                    per_sm * read_bytes / (rates.l2_bytes_per_clock_per_sm * clock))
        mma_us = per_sm * rows * k_padded * plan.block_b / mma_rate / clock
        shared_us = per_sm * (weight_bytes + 2 * values_bytes) / rates.shared_bytes_per_clock / clock
        barrier_us = rates.barrier_us if plan.grid[0] > 1 and not tagged else 0.0
        total += barrier_us + rates.l2_latency_us + max(l2_us, mma_us, shared_us, hbm_us) + rates.pointwise_us
    return total


def _tensor_cores(dot: str, precision: str) -> bool:
    return dot in ("fp16", "bf16") or (dot == "fp32" and precision == "tf32")


def _candidate(cell, direction, projected, batch, hidden, state, block_b, block_u, resident,
               num_warps, dot, precision, acc, cap=1 << 30) -> Optional[Plan]:
    """The plan with these tiles, or None where its warps cannot share the products without
    repeating each other's tiles."""
    unit_blocks = -(-hidden // block_u)
    block_p = power_of_two_at_least(-(-state // unit_blocks), MIN_TILE) if projected else 0
    prods = products(cell, direction, projected, hidden, state, block_u, block_p)
    if max(rows for rows, _ in prods) > MAX_ROWS:
        return None
    if _tensor_cores(dot, precision):
        # K split across every warp where each slice holds >= 16 and the per-warp tile is small;
        # otherwise the warps must tile M (16 rows) and N (8 columns) without repeats.
        if all(k >= num_warps * MIN_TILE and rows * block_b <= MAX_SPLIT_ACCUMULATOR for rows, k in prods):
            split = num_warps
        elif all((rows // 16) * (block_b // 8) >= num_warps for rows, _ in prods):
            split = 1
        else:
            return None
        block_k = max(64, MIN_TILE * split)
    else:
        if resident:
            return None  # FMA products keep their operands in registers: W is streamed
        split = 1
        block_k = 32 if dot == "fp32" else 1  # float64: one k per outer product (kernels.product)
    chunks = [k_chunks(k, MIN_TILE * split, cap) if resident else (0, 0, 0) for _, k in prods] + [(0, 0, 0)]
    if None in chunks:
        return None
    return Plan(
        cell=cell, direction=direction, projected=projected, block_b=block_b, block_u=block_u,
        block_p=block_p, num_warps=num_warps, split=split, resident=resident,
        chunks=chunks[0], proj_chunks=chunks[1], block_k=0 if resident else block_k,
        stages=0 if resident else 3, grid=(unit_blocks, -(-batch // block_b)), dot=dot,
        precision=precision, acc=acc, products=prods,
    )


@functools.lru_cache(maxsize=4096)
def recurrence_plans(cell: str, direction: str, batch: int, hidden: int, state: int,
                     projected: bool, dtype_name: str, limits: DeviceLimits, tf32: bool = False,
                     interpreting: bool = False) -> list:
    """Candidate plans for a recurrence over `batch` rows and `hidden` units (LSTM state size
    `state`, = hidden unless projected), best first: the fitting plans by estimated step time,
    then those whose batch blocks must run in several persistent launches (by the estimated time
    of all of them), then the rest (which kernels.launch runs one phase per launch).
    Cached: the result is a tuple of frozen plans.

    `interpreting`: the plans a GPU would get, with float32 products (Triton's interpreter computes
    bfloat16 dots wrongly), those with 32 product rows first (several programs at the test sizes,
    few enough to stay fast)."""
    dot, precision, acc = operand_dtype(dtype_name, tf32)
    widest_b = min(MAX_BLOCK_B, power_of_two_at_least(batch, MIN_TILE))
    block_bs = [b for b in (16, 32, 64, 128, 256) if b <= widest_b]
    slots = SLOTS[cell] if direction == "forward" else 1
    units = [max(1, MIN_TILE // slots)]
    while units[-1] < hidden:
        units.append(units[-1] * 2)
    candidates = [
        plan
        for block_b in block_bs
        for block_u in units
        for resident, cap in ((True, 1 << 30), (True, 1024), (True, 512), (True, 256), (False, 0))
        for num_warps in (1, 2, 4, 8, 16)
        if (plan := _candidate(cell, direction, projected, batch, hidden, state, block_b, block_u,
                               resident, num_warps, dot, precision, acc, cap)) is not None
    ]
    candidates = list(dict.fromkeys(candidates))  # capped chunks often equal the uncapped ones
    fitting = sorted((p for p in candidates if fits(p, limits)), key=step_estimate_us)

    def grouped(p):  # batch blocks in several persistent launches, then one launch per phase
        launches = estimated_launches(p, limits)
        return (launches == 0, sequence_step_estimate_us(p, launches, limits) if launches else step_estimate_us(p))

    others = sorted((p for p in candidates if not fits(p, limits)), key=grouped)
    if not interpreting:
        return tuple(fitting + others)
    fitting.sort(key=lambda p: (p.block_b, abs(p.products[0][0] - INTERPRETER_ROWS), not p.resident, p.num_warps != 4))
    return tuple(p if p.dot == "fp64" else replace(p, dot="fp32", precision="ieee") for p in fitting + others)
