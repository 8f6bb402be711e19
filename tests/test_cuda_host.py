"""Host tests of the CUDA recurrence, no GPU needed:

- the launch planner (csrc/cuda/recurrence_planner.cpp, plain C++) on H100 and H200 descriptions at
  the judged points B in {1, 8, 16, 64, 256} x H in {256, 512, 768, 1024} and at odd sizes;
- the fragment layouts against the PTX ISA's definition, and the weight packing
  (csrc/cuda/tests/recurrence_emulator.cu `check`);
- the kernels' building blocks (the passes, the cells, the packing, the fragment positions, the
  pipeline's chunking and the block slicing) run on the CPU by the emulator over each regime, cell,
  direction and math, against fused_rnn/reference.py.

The emulator runs the kernel's algorithm with only the warp-level multiply emulated; what remains
for a GPU is the device code itself (cp.async, mma.sync, grid.sync, the launch), which
tests/test_native_cuda.py covers.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.utils.cpp_extension
from cuda_plans import (
    BF16_MMA, CUDA_DIR, CXX, F16_MMA, F32_FMA, F64_FMA, GLOBAL, JUDGED_BATCH, JUDGED_HIDDEN, REGISTERS, SHARED,
    TF32_MMA, build_plan_report, plans, run,
)

from fused_rnn import reference
from fused_rnn.parity import GATE_COUNT, Case, make_inputs, relative_error

NVCC = shutil.which("nvcc")

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
MATH_DTYPE = {BF16_MMA: BF16, F16_MMA: F16, TF32_MMA: F32, F32_FMA: F32, F64_FMA: F64}


@pytest.fixture(scope="module")
def plan_report(tmp_path_factory) -> Path:
    if CXX is None:
        pytest.skip("no C++ compiler")
    return build_plan_report(tmp_path_factory.mktemp("planner"))


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    if NVCC is None:
        pytest.skip("nvcc is not installed")
    out = tmp_path_factory.mktemp("emulator") / "recurrence_emulator"
    run([NVCC, "-std=c++17", "-O2", *torch.utils.cpp_extension.COMMON_NVCC_FLAGS, "-o", str(out),
         str(CUDA_DIR / "tests" / "recurrence_emulator.cu"), str(CUDA_DIR / "recurrence_planner.cpp")])
    return out


# ---------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------

JUDGED = [
    (device, cell, direction, math_, batch, hidden, hidden, False)
    for device in ("h100", "h200")
    for cell in (0, 1, 2)
    for direction in (0, 1)
    for math_ in range(5)
    for batch in JUDGED_BATCH
    for hidden in JUDGED_HIDDEN
]


def _fits_device(plan: dict) -> None:
    assert 1 <= plan["blocks"] and plan["units_per_block"] >= 1 and plan["stages"] >= 1, plan
    assert plan["shared_bytes"] <= plan["shared_per_block_optin"], plan
    assert plan["shared_bytes"] + plan["reserved"] <= plan["shared_per_sm"], plan
    assert plan["warps_m"] * plan["warps_k"] == 8, plan
    assert plan["units_per_block"] * plan["unit_slices"] >= 1


def test_every_judged_point_plans_a_resident_grid(plan_report):
    """At every judged point, each cell, direction and math gets a plan whose grid is resident at
    one block per SM (the cooperative launch), within the shared memory of a block and an SM."""
    for problem, plan in zip(JUDGED, plans(plan_report, JUDGED)):
        _fits_device(plan)
        assert plan["persistent"] and plan["blocks"] <= plan["sm_count"], (problem, plan)
        assert plan["math"] == problem[3], (problem, plan)
        batch, hidden = problem[4], problem[5]
        assert plan["batch_per_block"] * plan["batch_slices"] >= batch
        assert plan["units_per_block"] * plan["unit_slices"] >= hidden
        assert plan["estimated_step_us"] > 0


def test_tensor_core_slices_live_in_registers(plan_report):
    """The forward keeps the weight slice in registers at every judged point in bf16, f16 and tf32,
    and so does the bf16/f16 backward up to B = 16 (beyond, the planner's cost model may prefer
    fewer, larger blocks reading their slice from shared memory). Exact float32 and float64 never
    hold it in registers."""
    for problem, plan in zip(JUDGED, plans(plan_report, JUDGED)):
        _, _, direction, math_, batch, hidden, _, _ = problem
        forward = direction == 0
        if (forward and math_ in (BF16_MMA, F16_MMA, TF32_MMA)) or (math_ in (BF16_MMA, F16_MMA) and batch <= 16):
            assert plan["regime"] == REGISTERS, (problem, plan)
            assert plan["k_steps_per_warp"] <= plan["k_capacity"], plan
        if math_ in (F32_FMA, F64_FMA):
            assert plan["regime"] != REGISTERS, (problem, plan)


def test_float64_lstm_streams_its_largest_slices_from_l2(plan_report):
    """The float64 LSTM forward weights at H = 1024 (33.5 MB) exceed the shared memory of 132 SMs."""
    (plan,) = plans(plan_report, [("h100", 1, 0, F64_FMA, 16, 1024, 1024, False)])
    assert plan["regime"] == GLOBAL


def test_h200_plans_like_an_h100(plan_report):
    """The two differ in L2 size only, which the planner does not use."""
    h100 = plans(plan_report, [p for p in JUDGED if p[0] == "h100"])
    h200 = plans(plan_report, [p for p in JUDGED if p[0] == "h200"])
    assert h100 == h200


def test_odd_sizes_plan_within_the_device(plan_report):
    problems = [
        ("h100", cell, direction, math_, batch, hidden, state, projected)
        for cell in (0, 1, 2)
        for direction in (0, 1)
        for math_ in range(5)
        for batch, hidden in ((1, 1), (5, 33), (40, 100), (300, 257), (3, 3000))
        for state, projected in ((hidden, False),) + (((max(1, hidden // 3)), True),) * (cell == 1)
    ]
    for problem, plan in zip(problems, plans(plan_report, problems)):
        _fits_device(plan)
        assert plan["units_per_block"] * plan["unit_slices"] >= problem[5], (problem, plan)


# ---------------------------------------------------------------------------------------------
# Fragment layouts, packing, and the emulated recurrence against the reference
# ---------------------------------------------------------------------------------------------


def test_fragment_layouts_and_packing(emulator):
    """The permuted k order of the A and B fragments is one permutation consistent with the PTX
    layouts, a tile multiplied through it is the plain product, and packing covers each weight of a
    block's slice exactly once (every catalogue entry, several shapes)."""
    assert run([str(emulator), "check"]).strip() == "ok"


@dataclass(frozen=True)
class Emulated:
    """One emulated op call: the cell, direction and math, the shape, and the plan to force
    (regime "plan" = the planner's own)."""

    cell: str
    direction: str
    math: int
    steps: int
    batch: int
    hidden: int
    regime: int | str
    m_tiles: int = 2
    warps_m: int = 1
    units: int = 8
    batch_per_block: int = 16
    max_chunk_steps: int = 0
    lengths: bool = True
    save: bool = True

    def __str__(self) -> str:
        regime = self.regime if isinstance(self.regime, str) else ("registers", "shared", "global")[self.regime]
        return (f"{self.cell}-{self.direction}-{['bf16', 'f16', 'tf32', 'f32', 'f64'][self.math]}-{regime}-"
                f"T{self.steps}B{self.batch}H{self.hidden}-wm{self.warps_m}-u{self.units}-b{self.batch_per_block}"
                f"-c{self.max_chunk_steps}{'-lengths' if self.lengths else ''}{'' if self.save else '-inference'}")


EMULATED = [
    # Several unit slices (the last partial), two batch slices (the last partial), k-steps over few warps.
    Emulated("lstm", "forward", BF16_MMA, 7, 20, 33, REGISTERS),
    Emulated("lstm", "backward", BF16_MMA, 7, 20, 33, REGISTERS, m_tiles=1, units=16, batch_per_block=32),
    Emulated("gru", "forward", F16_MMA, 5, 20, 100, SHARED, warps_m=2, units=10, max_chunk_steps=1),
    Emulated("gru", "backward", F16_MMA, 5, 20, 100, GLOBAL, units=5, max_chunk_steps=1),
    Emulated("rnn_tanh", "forward", TF32_MMA, 7, 5, 33, REGISTERS, m_tiles=1, units=16),
    Emulated("rnn_relu", "backward", TF32_MMA, 7, 5, 33, SHARED, units=32, max_chunk_steps=1),
    Emulated("lstm", "forward", F32_FMA, 6, 5, 33, SHARED, warps_m=2, units=15, max_chunk_steps=2),
    Emulated("lstm", "backward", F32_FMA, 6, 17, 33, GLOBAL, units=7, batch_per_block=32, max_chunk_steps=3),
    Emulated("gru", "forward", F64_FMA, 7, 5, 100, GLOBAL, warps_m=4, units=32),
    Emulated("gru", "backward", F64_FMA, 7, 5, 100, SHARED, units=9, max_chunk_steps=4),
    Emulated("rnn_relu", "forward", F64_FMA, 7, 3, 33, SHARED, units=5),
    Emulated("rnn_tanh", "backward", F64_FMA, 1, 3, 1, GLOBAL, units=1, lengths=False),
    Emulated("lstm", "forward", F64_FMA, 5, 5, 33, SHARED, warps_m=8, units=32, save=False),
    Emulated("lstm", "backward", F64_FMA, 5, 5, 33, GLOBAL, m_tiles=2, warps_m=2, units=20),
    Emulated("gru", "forward", BF16_MMA, 5, 5, 33, REGISTERS, save=False),
    # The planner's own plans at a judged hidden size.
    Emulated("lstm", "forward", BF16_MMA, 3, 16, 256, "plan", lengths=False),
    Emulated("lstm", "backward", BF16_MMA, 3, 16, 256, "plan", lengths=False),
]


def _write(directory: Path, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype in (F16, BF16):
        tensor = tensor.view(torch.int16)
    tensor.numpy().tofile(directory / f"{name}.bin")


def _read(directory: Path, name: str, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    raw = np.fromfile(directory / f"out_{name}.bin", dtype=np.int16 if dtype in (F16, BF16) else
                      {F32: np.float32, F64: np.float64}[dtype])
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _emulate(emulator: Path, case: Emulated, directory: Path, tensors: dict[str, Optional[torch.Tensor]],
             outputs: dict[str, tuple[torch.dtype, tuple]]) -> tuple[dict[str, torch.Tensor], dict]:
    """Runs the emulator on `tensors` -> (its outputs by name, its report of the plan)."""
    spec = {
        "cell": case.cell, "direction": case.direction, "math": case.math, "steps": case.steps,
        "batch": case.batch, "hidden": case.hidden, "lengths": int(case.lengths), "save": int(case.save),
        "regime": case.regime, "m_tiles": case.m_tiles, "warps_m": case.warps_m, "units": case.units,
        "batch_per_block": case.batch_per_block, "max_chunk_steps": case.max_chunk_steps,
    }
    (directory / "spec.txt").write_text("".join(f"{k} {v}\n" for k, v in spec.items()))
    for name, tensor in tensors.items():
        if tensor is not None:
            _write(directory, name, tensor)
    report = json.loads(run([str(emulator), "run", str(directory)]))
    assert report["planned"], f"{case}: the forced plan does not fit"
    return {name: _read(directory, name, dtype, shape) for name, (dtype, shape) in outputs.items()}, report


def _saved(cell: str, forward: tuple) -> dict[str, torch.Tensor]:
    if cell.startswith("lstm"):
        hs, _, _, cs, gates = forward
        return {"hs": hs, "cs": cs, "gates": gates}
    if cell == "gru":
        hs, _, gates = forward
        return {"hs": hs, "gates": gates}
    return {"hs": forward[0]}


def _reference(cell: str, direction: str, inputs: dict, extra: dict) -> tuple:
    x = inputs
    relu = cell == "rnn_relu"
    family = "rnn" if cell.startswith("rnn") else cell
    if direction == "forward":
        if family == "rnn":
            return reference.rnn_forward(x["xw"], x["w_hh"], x["h0"], x["lengths"], relu)
        if family == "lstm":
            return reference.lstm_forward(x["xw"], x["w_hh"], None, x["h0"], x["c0"], x["lengths"])
        return reference.gru_forward(x["xw"], x["w_hh"], x["b_hn"], x["h0"], x["lengths"])
    e = extra
    if family == "rnn":
        return reference.rnn_backward(e["grad_hs"], e["grad_h_n"], x["w_hh"], x["h0"], x["lengths"], e["hs"], relu)
    if family == "lstm":
        return reference.lstm_backward(e["grad_hs"], e["grad_h_n"], e["grad_c_n"], x["w_hh"], None, x["h0"],
                                       x["c0"], x["lengths"], e["hs"], e["cs"], e["gates"])
    return reference.gru_backward(e["grad_hs"], e["grad_h_n"], x["w_hh"], x["b_hn"], x["h0"], x["lengths"],
                                  e["hs"], e["gates"])


def _output_specs(case: Emulated, dtype: torch.dtype) -> dict[str, tuple[torch.dtype, tuple]]:
    T, B, H, G = case.steps, case.batch, case.hidden, GATE_COUNT[case.cell]
    acc = reference.accumulation_dtype(dtype)
    if case.direction == "forward":
        specs = {"hs": (dtype, (T, B, H)), "h_n": (dtype, (B, H))}
        if case.cell == "lstm":
            specs["c_n"] = (dtype, (B, H))
            if case.save:
                specs.update(cs=(acc, (T, B, H)), gates=(dtype, (T, B, 4 * H)))
        if case.cell == "gru" and case.save:
            specs["gates"] = (dtype, (T, B, 4 * H))
        return specs
    specs = {"dxw": (dtype, (T, B, G * H)), "dh0": (dtype, (B, H))}
    if case.cell == "lstm":
        specs["dc0"] = (dtype, (B, H))
    if case.cell == "gru":
        specs["d_hn"] = (dtype, (T, B, H))
    return specs


FORWARD_NAMES = {"rnn": ["hs", "h_n"], "lstm": ["hs", "h_n", "c_n", "cs", "gates"], "gru": ["hs", "h_n", "gates"]}
BACKWARD_NAMES = {"rnn": ["dxw", "dh0"], "lstm": ["dxw", "dh0", "dc0", "dw_hr"], "gru": ["dxw", "d_hn", "dh0"]}


@pytest.mark.parametrize("case", EMULATED, ids=str)
def test_emulated_recurrence_matches_reference(emulator, case, tmp_path):
    """Every output (saved tensors included) of the emulated op against the float64 reference on the
    same inputs: float64 1e-12, float32 1e-5 (tf32 5e-4), half types at most twice the error of the
    reference computed in that dtype. The backward runs on saved tensors the reference computed in
    the op's dtype."""
    dtype = MATH_DTYPE[case.math]
    family = "rnn" if case.cell.startswith("rnn") else case.cell
    generator = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))
    x64 = make_inputs(Case(case.cell, case.steps, case.batch, case.hidden, lengths=case.lengths), generator)
    x64.pop("w_hr", None)
    cast = {n: t if t is None or n == "lengths" else t.to(dtype) for n, t in x64.items()}
    exact_inputs = {n: t if t is None or n == "lengths" else t.double() for n, t in cast.items()}

    tensors = dict(cast)
    extra64, extra_dtype = {}, {}
    if case.direction == "backward":
        T, B, H = case.steps, case.batch, case.hidden
        saved = _saved(case.cell, _reference(case.cell, "forward", cast, {}))  # in the op's dtype
        grads = {"grad_hs": torch.randn(T, B, H, generator=generator, dtype=F64),
                 "grad_h_n": torch.randn(B, H, generator=generator, dtype=F64)}
        if family == "lstm":
            grads["grad_c_n"] = torch.randn(B, H, generator=generator, dtype=F64)
        grads = {n: g.to(dtype) for n, g in grads.items()}
        extra_dtype = {**saved, **grads}
        extra64 = {n: t.double() for n, t in extra_dtype.items()}
        tensors.update(extra_dtype)
    outputs, report = _emulate(emulator, case, tmp_path, tensors, _output_specs(case, dtype))

    names = FORWARD_NAMES[family] if case.direction == "forward" else BACKWARD_NAMES[family]
    exact = dict(zip(names, _reference(case.cell, case.direction, exact_inputs, extra64)))
    in_dtype = dict(zip(names, _reference(case.cell, case.direction, cast, extra_dtype)))
    for name, value in outputs.items():
        error = relative_error(value, exact[name])
        if dtype == F64:
            limit = 1e-12
        elif dtype == F32:
            limit = 5e-4 if case.math == TF32_MMA else 1e-5
        else:
            limit = 2.0 * relative_error(in_dtype[name], exact[name])
        assert error <= limit, f"{case} {name}: relative error {error:.3g} > {limit:.3g} ({report})"
