"""The recurrence launch planner (kernels.plan) as a plain function, with H100 limits, on any machine:
K chunks, CUDA's occupancy rules, a fitting plan at every point of the issue's grid by the estimate
(the compile gate, tests/test_triton_compile.py, checks the compiled kernels at its corners and
judged points), and the plan of the judged point. The exchange helpers' host side round-trips."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from fused_rnn.kernels import exchange  # noqa: E402
from fused_rnn.kernels import plan as planner  # noqa: E402

BATCHES = (1, 2, 8, 16, 32, 64, 128, 256)
HIDDEN = (32, 64, 128, 256, 512, 768, 1024, 1536, 2048)
DTYPES = ("bf16", "fp16", "fp32", "fp64")
KERNELS = [("rnn", False), ("lstm", False), ("lstm", True), ("gru", False)]


@pytest.mark.parametrize("k, quantum, chunks", [(768, 64, (512, 256, 0)), (100, 16, (64, 32, 16)),
                                                (33, 16, (32, 16, 0)), (240, 16, (256, 0, 0)),
                                                (2048, 128, (2048, 0, 0)), (1, 16, (16, 0, 0))])
def test_k_chunks_examples(k, quantum, chunks):
    assert planner.k_chunks(k, quantum) == chunks


@pytest.mark.parametrize("quantum", [16, 32, 64, 128])
def test_k_chunks_cover_k_with_at_most_three_powers_of_two(quantum):
    for k in range(1, 4097):
        chunks = [c for c in planner.k_chunks(k, quantum) if c]
        assert 1 <= len(chunks) <= 3 and chunks == sorted(chunks, reverse=True), (k, chunks)
        assert all(c % quantum == 0 and c & (c - 1) == 0 for c in chunks), (k, chunks)
        assert k <= sum(chunks) < k + chunks[-1], (k, chunks)


def test_programs_per_sm_follows_cuda_occupancy_rules():
    h100 = planner.H100
    # 255 registers x 128 threads -> 32768 of 65536 registers (per-warp units of 256): 2 per SM
    assert planner.programs_per_sm(h100, 255, 0, 4) == 2
    # 64 registers x 4 warps: 8 by registers; threads allow 16
    assert planner.programs_per_sm(h100, 64, 0, 4) == 8
    # 100 KB of shared memory plus the 1 KB the system reserves per block: 2 in 228 KB
    assert planner.programs_per_sm(h100, 32, 100 * 1024, 4) == 2
    assert planner.programs_per_sm(h100, 32, 0, 1) == 32  # the 32-blocks-per-SM cap
    assert planner.programs_per_sm(h100, 32, 232448, 4) == 1
    assert planner.programs_per_sm(h100, 32, 232449, 4) == 0  # above the per-block limit
    assert planner.programs_per_sm(h100, 256, 0, 4) == 0  # above 255 registers per thread


def may_need_several_launches(cell: str, direction: str, batch: int, hidden: int, dtype: str) -> bool:
    """The grid points where a plan may not keep its whole grid resident on an H100: B = 256 with
    H >= 1536, and float64 at B * H >= 2^18. There a step's outputs (up to 4H x B) and their gate
    math, all in registers at once, exceed what 132 SMs hold, so kernels.launch runs the batch
    blocks in several persistent launches, one after another."""
    return (batch == 256 and hidden >= 1536) or (dtype == "fp64" and batch * hidden >= 2**18)


@pytest.mark.parametrize("cell, projected", KERNELS, ids=lambda v: str(v))
def test_every_grid_point_has_a_resident_plan_by_the_estimate(cell, projected):
    """The issue's grid, both directions, every dtype: the planner's first candidate fits an H100
    block (shared memory, estimated registers) and runs persistent at the estimated occupancy: its
    whole grid in one launch, except at the points may_need_several_launches names, where its
    batch blocks take a few launches (never one launch per phase)."""
    misfits = []
    for direction, batch, hidden, dtype in itertools.product(("forward", "backward"), BATCHES, HIDDEN, DTYPES):
        state = hidden // 2 if projected else hidden
        plan = planner.recurrence_plans(cell, direction, batch, hidden, state, projected, dtype, planner.H100)[0]
        launches = planner.estimated_launches(plan, planner.H100)
        several = may_need_several_launches(cell, direction, batch, hidden, dtype)
        if launches == 0 or (launches > 1 and not several):
            misfits.append(f"{direction} B={batch} H={hidden} {dtype}: {launches} launches, {plan.describe()}")
    assert not misfits, misfits


def test_blocks_per_launch_splits_the_batch_blocks_into_resident_launches():
    plan = planner.recurrence_plans("lstm", "forward", 256, 2048, 2048, False, "bf16", planner.H100)[0]
    units, columns = plan.grid
    assert planner.blocks_per_launch(plan, 1, planner.H100) == min(columns, 132 // units)
    assert planner.blocks_per_launch(plan, 64, planner.H100) == columns
    assert planner.blocks_per_launch(plan, 1, planner.DeviceLimits("small", sms=units - 1)) == 0
    launches = planner.estimated_launches(plan, planner.H100)
    assert launches >= 1
    assert planner.sequence_step_estimate_us(plan, launches) >= planner.step_estimate_us(plan)


def test_the_judged_point_gets_the_documented_plan():
    """LSTM B16 H768 bfloat16 on an H100 (kernels/lstm.py's docstring)."""
    forward = planner.recurrence_plans("lstm", "forward", 16, 768, 768, False, "bf16", planner.H100)[0]
    assert (forward.grid, forward.block_u, forward.num_warps, forward.split, forward.resident,
            forward.chunks, forward.products) == ((48, 1), 16, 8, 8, True, (512, 256, 0), ((64, 768),))
    backward = planner.recurrence_plans("lstm", "backward", 16, 768, 768, False, "bf16", planner.H100)[0]
    assert (backward.grid, backward.block_u, backward.num_warps, backward.resident, backward.chunks,
            backward.products) == ((48, 1), 16, 8, True, (1024, 1024, 1024), ((16, 3072),))
    assert planner.step_estimate_us(forward) < 1.96 and planner.step_estimate_us(backward) < 2.6


def test_interpreter_plans_use_float32_products_and_small_tiles():
    plans = planner.recurrence_plans("lstm", "forward", 5, 33, 33, False, "bf16", planner.H100, interpreting=True)
    assert plans[0].dot == "fp32" and plans[0].precision == "ieee"
    assert plans[0].products[0][0] == planner.INTERPRETER_ROWS and plans[0].grid[0] > 1
    fp64 = planner.recurrence_plans("gru", "backward", 5, 33, 33, False, "fp64", planner.H100, interpreting=True)
    assert fp64[0].dot == "fp64" and not fp64[0].resident


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_exchanged_words_round_trip(dtype):
    values = torch.randn(3, 5).to(dtype)
    words = exchange.pack(values, 7)
    assert torch.equal(exchange.unpack(words, dtype), values)
    if exchange.tagged(dtype):
        assert words.dtype == (torch.int32 if dtype.itemsize == 2 else torch.int64)
        mask = 0xFFFF if dtype.itemsize == 2 else 0xFFFFFFFF
        assert bool(((words & mask) == 7).all())
        fresh = exchange.exchange_buffer((2, 3), dtype, torch.device("cpu"))
        assert bool(((fresh & mask) == mask).all())  # no phase writes the tag of a fresh buffer first


def test_choose_plan_prefers_a_resident_grid_then_resident_batch_blocks_then_one_launch_per_phase():
    """kernels.launch.choose_plan on made-up compiled resources: 8 warps and 32 registers hold 8
    programs per SM (by threads), so 132 x 8 programs are resident on an H100."""
    from fused_rnn.kernels import launch

    base = replace(planner.recurrence_plans("lstm", "forward", 64, 1024, 1024, False, "bf16", planner.H100)[0],
                   num_warps=8)
    resident = replace(base, grid=(132, 4))  # 528 programs: all resident
    halves = replace(base, grid=(132 * 4, 4))  # 2112: two batch blocks per launch
    too_wide = replace(base, grid=(132 * 16, 4))  # one batch block alone exceeds the device
    fits = lambda plan: (32, 0, 0)  # noqa: E731
    assert launch.choose_plan([halves, resident], fits, planner.H100) == (resident, 4)
    assert launch.choose_plan([too_wide, halves], fits, planner.H100) == (halves, 2)
    assert launch.choose_plan([too_wide], fits, planner.H100) == (too_wide, 0)
    spills_when_resident = lambda plan: (32, 64 if plan is resident else 0, 0)  # noqa: E731
    assert launch.choose_plan([resident, halves], spills_when_resident, planner.H100) == (halves, 2)
    assert launch.choose_plan([resident], spills_when_resident, planner.H100) == (resident, 0)
    other = replace(resident, num_warps=4)  # 16 programs per SM by threads: resident too
    slower = replace(resident, grid=(264, 2), block_b=2 * resident.block_b)  # resident, estimated slower
    assert planner.step_estimate_us(slower) > launch.LOCAL_FREE_MARGIN * planner.step_estimate_us(resident)
    assert planner.step_estimate_us(other) <= launch.LOCAL_FREE_MARGIN * planner.step_estimate_us(resident)
    stack_for_resident = lambda plan: (32, launch.SPILL_BOUND_BYTES if plan is resident else 0, 0)  # noqa: E731
    assert launch.choose_plan([resident, other], stack_for_resident, planner.H100) == (other, 4)
    assert launch.choose_plan([resident, slower], stack_for_resident, planner.H100) == (resident, 4)
    assert launch.choose_plan([resident, halves], stack_for_resident, planner.H100) == (resident, 4)
    with pytest.raises(RuntimeError, match="no launch plan fits"):
        launch.choose_plan([resident], lambda plan: None, planner.H100)


@pytest.mark.parametrize("batch, hidden", [(0, 33), (5, 0)])
def test_empty_problems_get_a_plan_that_launches_nothing(batch, hidden):
    plans = planner.recurrence_plans("lstm", "forward", batch, hidden, hidden, False, "fp32", planner.H100)
    assert plans and 0 in plans[0].grid and planner.step_estimate_us(plans[0]) == 0.0
    assert planner.estimated_launches(plans[0], planner.H100) == 1
