"""What an H100 would run of the Triton backend, found without a GPU: the launches a backend function
makes (recorded on meta tensors instead of run), each compiled for sm_90 the way Triton compiles it
at run time, and what the compiled kernel needs.

    for launch in point_launches(Point("lstm", "forward", 16, 768, "bf16")):
        compiled = compile_sm90(launch)
        compiled.shared, compiled.registers, compiled.spill_bytes, compiled.step_loop_problems

Run-time-like specialisation (triton.runtime.jit's rules): pointers 16-byte aligned (torch
allocations are), integers divisible by 16 marked so, integers equal to 1 made constants, except the
`do_not_specialize` parameters. Registers, stack frame and spills come from ptxas's report, dynamic
shared memory from the compiled metadata, static shared memory from `cuobjdump -res-usage`.

Run as a script it compiles a JSON list of points (deduplicated, in parallel, cached by the
kernels' source); it must run where the kernels were defined without TRITON_INTERPRET, so
tests/test_triton_compile.py runs it in a subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import sys
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import torch

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fused_rnn.kernels import launch
from fused_rnn.kernels import plan as planner

sys.path.insert(0, str(Path(__file__).parent))  # cuda_toolchain, when run as a script

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                 torch.float64: "*fp64", torch.int64: "*i64", torch.int32: "*i32"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}


@dataclasses.dataclass
class KernelLaunch:
    """One launch a backend function would make: kernel, grid, every argument, the constexprs and
    warps; for the recurrence kernels also the planner's candidates (`plan` the one launched here)
    and what kernels.launch.run_phases received, to launch another candidate (`with_plan`)."""

    kernel: object
    grid: tuple
    arguments: tuple
    constexprs: dict
    num_warps: int
    plan: Optional[planner.Plan] = None
    candidates: tuple = ()
    phases: int = 0
    kernel_args: tuple = ()
    meta: Optional[dict] = None

    def with_plan(self, plan: planner.Plan) -> "KernelLaunch":
        constexprs = launch.kernel_meta(self.kernel, plan, self.meta)
        num_warps = constexprs.pop("num_warps")
        counters = torch.empty(plan.grid[1], dtype=torch.int32, device="meta")
        return dataclasses.replace(self, grid=plan.grid, arguments=(*self.kernel_args, counters, 0, self.phases, 0),
                                   constexprs=constexprs, num_warps=num_warps, plan=plan)

    @property
    def programs(self) -> int:
        programs = 1
        for extent in self.grid:
            programs *= extent
        return programs


# ---------------------------------------------------------------------------------------------
# Recording launches on meta tensors.
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _patched(owner, **replacements) -> Iterator[None]:
    originals = {name: getattr(owner, name) for name in replacements}
    for name, value in replacements.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(owner, name, value)


def recorded_launches(function, *args, limits: planner.DeviceLimits = planner.H100,
                      tf32: bool = False) -> list[KernelLaunch]:
    """Call a backend function on meta tensors as on a CUDA device with `limits` (float32 products
    in tf32 when `tf32`), recording its kernel launches instead of running them."""
    from fused_rnn.kernels import attention

    recorded: list[KernelLaunch] = []

    def plans(cell, direction, batch, hidden, state, projected, like):
        return planner.recurrence_plans(cell, direction, batch, hidden, state, projected,
                                        launch.DTYPE_NAMES[like.dtype], limits, tf32=tf32)

    def run_phases(kernel, candidates, phases, kernel_args, meta, shape):
        unplanned = KernelLaunch(kernel, (), (), {}, 0, candidates=tuple(candidates), phases=phases,
                                 kernel_args=kernel_args, meta=meta)
        recorded.append(unplanned.with_plan(candidates[0]))

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def record(*kernel_args, num_warps=4, **constexprs):
                recorded.append(KernelLaunch(self.kernel, tuple(grid), kernel_args, constexprs, num_warps))
            return record

    kernels = {name: Recorder(getattr(attention, name)) for name in (
        "attention_forward_kernel", "combine_splits_kernel", "attention_backward_kv_kernel",
        "attention_backward_q_kernel")}
    with _patched(launch, device_limits=lambda device: limits, plans=plans, run_phases=run_phases), \
            _patched(attention, **kernels), _patched(torch.backends.cuda.matmul, allow_tf32=tf32):
        function(*args)
    return recorded


# ---------------------------------------------------------------------------------------------
# Compiling one launch for sm_90.
# ---------------------------------------------------------------------------------------------


def signature(kernel, arguments: tuple, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of an ASTSource for these launch arguments."""
    types, constants, attrs = {}, dict(constexprs), {}
    values = dict(zip(kernel.arg_names, arguments))
    for index, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        if name in constexprs:
            types[name] = "constexpr"
            continue
        value = values[name]
        specialise = not param.do_not_specialize
        if value is None:
            types[name], constants[name] = "constexpr", None
        elif isinstance(value, torch.Tensor):
            types[name] = POINTER_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            types[name] = "fp32"
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{kernel.__name__}: argument {name} = {value!r}")
        elif value == 1 and specialise:
            types[name], constants[name] = "constexpr", 1
        else:
            types[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and specialise:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return types, constants, attrs


def compile_key(kernel_launch: KernelLaunch) -> str:
    """What determines the compiled kernel of a launch: kernel, signature, constants, warps."""
    types, constants, attrs = signature(kernel_launch.kernel, kernel_launch.arguments, kernel_launch.constexprs)
    return repr((kernel_launch.kernel.__name__, sorted(types.items()),
                 sorted((k, str(v)) for k, v in constants.items()), sorted(attrs), kernel_launch.num_warps))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """What an sm_90 compile of one kernel variant needs and shows."""

    shared: int  # dynamic shared memory (the compiled metadata's `shared`)
    static_shared: int
    registers: int
    stack_bytes: int
    spill_bytes: int  # spill stores per thread (ptxas)
    step_loop_problems: tuple  # recurrence kernels: see step_loop_problems
    resident_allocations: int  # recurrence kernels: shared-memory allocations before the step loop
    synchronisation: str  # between programs, in the PTX: "tagged" (relaxed atomic exchanges and
    # volatile loads: kernels.exchange), "barrier" (release and acquire atomics), or "none"

    def programs_per_sm(self, limits: planner.DeviceLimits, num_warps: int) -> int:
        return planner.programs_per_sm(limits, self.registers, self.shared + self.static_shared, num_warps)


def step_loop(ttgir: str) -> tuple[str, str]:
    """(the TTGIR before the step loop, the step loop): the scf.for from %k_start to %k_stop."""
    lines = ttgir.splitlines()
    for start, line in enumerate(lines):
        if re.search(r"scf\.for %\S+ = %k_start to %k_stop", line):
            break
    else:
        raise AssertionError("no step loop (scf.for from %k_start to %k_stop) in the TTGIR")
    depth, body = 0, []
    for line in lines[start:]:
        body.append(line)
        depth += line.count("{") - line.count("}")
        if depth <= 0 and len(body) > 1:
            break
    return "\n".join(lines[:start]), "\n".join(body)


def step_loop_problems(ttgir: str) -> tuple:
    """Async copies (cp.async) that could cross a step boundary: in the step loop, every
    async_copy_global_to_local must be followed by an async_wait {num = 0} before the body ends
    (the step loop itself is not pipelined; an inner K loop may be, if it drains in the step)."""
    _, body = step_loop(ttgir)
    last_copy = max((m.start() for m in re.finditer(r"ttg\.async_copy_global_to_local", body)), default=-1)
    last_drain = max((m.start() for m in re.finditer(r"ttg\.async_wait[^\n]*\{num = 0 : i32\}", body)), default=-1)
    if last_copy > last_drain:
        return ("an async copy in the step loop is not drained (async_wait num = 0) within the step",)
    return ()


def compile_sm90(kernel_launch: KernelLaunch) -> Compiled:
    """Compile one launch's kernel for sm_90 as Triton would at run time, and read its resources:
    registers, stack frame and spill bytes from ptxas's own report (Triton runs `ptxas -v` and
    prints its log when asked; its n_spills at run time is the stack frame / 4), static shared
    memory from cuobjdump."""
    from triton import knobs

    from cuda_toolchain import parse_ptxas_report

    kernel = kernel_launch.kernel
    types, constants, attrs = signature(kernel, kernel_launch.arguments, kernel_launch.constexprs)
    options = {"num_warps": kernel_launch.num_warps, "launch_cooperative_grid": kernel_launch.plan is not None}
    log = io.StringIO()
    with _patched(knobs.nvidia, dump_ptxas_log=True), _patched(knobs.compilation, always_compile=True), \
            contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(kernel, types, constants, attrs=attrs), target=TARGET, options=options)
    (resources,) = parse_ptxas_report(log.getvalue()).values()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    match = re.search(r"SHARED:(\d+)", usage)
    assert match, usage
    static_shared = int(match.group(1))
    ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
    problems, allocations = (), 0
    if "k_start" in kernel.arg_names:
        before_loop, _ = step_loop(ttgir)
        problems = step_loop_problems(ttgir)
        allocations = len(re.findall(r"ttg\.local_alloc %", before_loop))
    return Compiled(
        shared=compiled.metadata.shared,
        static_shared=static_shared,
        registers=resources.registers,
        stack_bytes=resources.stack_bytes,
        spill_bytes=resources.spill_stores,
        step_loop_problems=problems,
        resident_allocations=allocations,
        synchronisation=_synchronisation(ptx),
    )


def _synchronisation(ptx: str) -> str:
    if re.search(r"atom\.global\.gpu\.relaxed\.exch", ptx) and "ld.volatile.global" in ptx:
        return "tagged"
    if re.search(r"(red|atom)[.\w]*\.release", ptx) and re.search(r"(atom|ld)[.\w]*\.acquire", ptx):
        return "barrier"
    return "none"


# ---------------------------------------------------------------------------------------------
# The compile gate's points.
# ---------------------------------------------------------------------------------------------


def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


@dataclasses.dataclass(frozen=True)
class Point:
    """A recurrence (`kind` "recurrence") of `cell` (fused_rnn.parity.CELLS), `direction`
    "forward", "inference" (LSTM, GRU) or "backward", `batch` rows, `hidden` units (LSTM
    projections: proj_size = hidden / 2); or an attention (`kind` "additive" or "dot") of `batch`
    rows, `queries` x `keys`, A = D = Dv = `hidden`, `direction` "forward" or "backward"."""

    kind: str
    direction: str
    batch: int
    hidden: int
    dtype: str  # a DTYPES key
    cell: str = ""
    queries: int = 0
    keys: int = 0
    tf32: bool = False  # float32 products in tf32 (torch.backends.cuda.matmul.allow_tf32)
    lengths: bool = True
    need_weights: bool = False

    def __str__(self) -> str:
        extra = ("-tf32" if self.tf32 else "") + ("" if self.lengths else "-nolengths")
        extra += "-weights" if self.need_weights else ""
        if self.kind == "recurrence":
            return f"{self.cell}-{self.direction}-B{self.batch}-H{self.hidden}-{self.dtype}{extra}"
        return (f"{self.kind}-{self.direction}-B{self.batch}-Tq{self.queries}-Tk{self.keys}"
                f"-D{self.hidden}-{self.dtype}{extra}")


def recurrence_inputs(cell: str, steps: int, batch: int, hidden: int, proj: int, dtype: torch.dtype,
                      lengths: bool) -> dict[str, Optional[torch.Tensor]]:
    """The inputs fused_rnn.parity.make_inputs would draw, as meta tensors of `dtype`."""
    from fused_rnn.parity import GATE_COUNT

    state = proj if cell == "lstm_proj" else hidden
    gates = GATE_COUNT[cell]
    inputs = {"xw": _meta(steps, batch, gates * hidden, dtype=dtype), "w_hh": _meta(gates * hidden, state, dtype=dtype),
              "h0": _meta(batch, state, dtype=dtype)}
    if cell.startswith("lstm"):
        inputs["w_hr"] = _meta(state, hidden, dtype=dtype) if cell == "lstm_proj" else None
        inputs["c0"] = _meta(batch, hidden, dtype=dtype)
    if cell == "gru":
        inputs["b_hn"] = _meta(hidden, dtype=dtype)
    inputs["lengths"] = _meta(batch, dtype=torch.int64) if lengths else None
    return inputs


def _recurrence_launches(point: Point, limits: planner.DeviceLimits) -> list[KernelLaunch]:
    from fused_rnn import kernels
    from fused_rnn.parity import backward_arguments, op_arguments

    dtype = DTYPES[point.dtype]
    proj = point.hidden // 2 if point.cell == "lstm_proj" else 0
    inputs = recurrence_inputs(point.cell, 16, point.batch, point.hidden, proj, dtype, point.lengths)
    family, args = op_arguments(point.cell, inputs)
    if point.direction != "backward":
        return recorded_launches(getattr(kernels, f"{family}_{point.direction}"), *args, limits=limits, tf32=point.tf32)
    outputs = []
    recorded_launches(lambda *a: outputs.append(getattr(kernels, f"{family}_forward")(*a)), *args, limits=limits)
    hs, h_n = outputs[0][:2]
    grads = [_meta(*s, dtype=dtype) for s in [hs.shape, h_n.shape] + ([inputs["c0"].shape] if family == "lstm" else [])]
    return recorded_launches(getattr(kernels, f"{family}_backward"),
                             *backward_arguments(point.cell, inputs, outputs[0], grads), limits=limits, tf32=point.tf32)


def _attention_launches(point: Point, limits: planner.DeviceLimits) -> list[KernelLaunch]:
    from fused_rnn.kernels import attention

    dtype = DTYPES[point.dtype]
    B, Tq, Tk, D = point.batch, point.queries, point.keys, point.hidden
    q, k, values = _meta(B, Tq, D, dtype=dtype), _meta(B, Tk, D, dtype=dtype), _meta(B, Tk, D, dtype=dtype)
    lengths = _meta(B, dtype=torch.int64) if point.lengths else None
    inputs = (q, k, _meta(D, dtype=dtype), values) if point.kind == "additive" else (q, k, values)
    scale = () if point.kind == "additive" else (0.125,)
    family = f"{point.kind}_attention"
    if point.direction == "forward":
        return recorded_launches(getattr(attention, f"{family}_forward"), *inputs, lengths, *scale,
                                 point.need_weights, limits=limits, tf32=point.tf32)
    context, lse = _meta(B, Tq, D, dtype=dtype), _meta(B, Tq, dtype=torch.float32 if point.dtype != "fp64" else dtype)
    weights = _meta(B, Tq, Tk, dtype=dtype) if point.need_weights else None
    return recorded_launches(getattr(attention, f"{family}_backward"), _meta(B, Tq, D, dtype=dtype), weights,
                             *inputs, lengths, context, lse, weights, *scale, limits=limits, tf32=point.tf32)


def point_launches(point: Point, limits: planner.DeviceLimits = planner.H100) -> list[KernelLaunch]:
    """The kernel launches of the backend function of `point` on meta tensors (recurrences: T = 16;
    the step count is not specialised)."""
    if point.kind == "recurrence":
        return _recurrence_launches(point, limits)
    return _attention_launches(point, limits)


# ---------------------------------------------------------------------------------------------
# Compiling many points: deduplicated, in parallel, cached by the kernels' source.
# ---------------------------------------------------------------------------------------------


def source_digest() -> str:
    """sha256 of the Triton version and every kernels/*.py source: cached results go stale with either."""
    from fused_rnn import kernels

    digest = hashlib.sha256(triton.__version__.encode())
    for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _compiled(kernel_launch: KernelLaunch, cache: Optional[Path]) -> dict:
    """Compiled's fields for a launch (or {"error": ...}), from the cache where it has them."""
    key = compile_key(kernel_launch)
    path = cache / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json") if cache else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    try:
        result = dataclasses.asdict(compile_sm90(kernel_launch))
    except Exception as error:  # reported by the point's test
        return {"error": f"{type(error).__name__}: {error}"[-3000:]}
    if path is not None:
        path.write_text(json.dumps(result))
    return result


def _choose_job(job: tuple) -> tuple:
    """The launch of job = (point, index, cache), and what kernels.launch.choose_plan would run of
    its candidates on an H100: -> (chosen plan index, batch blocks per persistent launch (0: one
    launch per phase), Compiled's fields of it)."""
    point, index, cache = job
    kernel_launch = point_launches(point)[index]
    if kernel_launch.plan is None:
        return 0, 0, _compiled(kernel_launch, cache)
    results = {}

    def resources(plan):
        results[plan] = _compiled(kernel_launch.with_plan(plan), cache)
        found = results[plan]
        if "error" in found:
            return None
        return found["registers"], found["stack_bytes"], found["shared"] + found["static_shared"]

    try:
        plan, blocks = launch.choose_plan(kernel_launch.candidates, resources, planner.H100)
    except RuntimeError:  # nothing fits a block: report the first candidate's compile
        plan, blocks = kernel_launch.candidates[0], 0
    return kernel_launch.candidates.index(plan), blocks, results[plan]


def _record(point: Point, kernel_launch: KernelLaunch, compiled: dict, blocks: int) -> dict:
    plan = kernel_launch.plan
    record = {"point": str(point), "kernel": kernel_launch.kernel.__name__, "grid": list(kernel_launch.grid),
              "programs": kernel_launch.programs, "num_warps": kernel_launch.num_warps, **compiled}
    if "error" not in compiled:
        record["per_sm"] = planner.programs_per_sm(planner.H100, compiled["registers"],
                                                   compiled["shared"] + compiled["static_shared"],
                                                   kernel_launch.num_warps)
    if plan is None:
        record["plan"] = ", ".join(f"{k}={v}" for k, v in kernel_launch.constexprs.items() if k.startswith("BLOCK"))
        record["plan"] += f", {kernel_launch.num_warps} warps"
    else:
        launches = -(-plan.grid[1] // blocks) if blocks else 0
        estimate = planner.sequence_step_estimate_us(plan, launches) if blocks else planner.step_estimate_us(plan)
        record.update(plan=plan.describe(), estimate_us=estimate, blocks_per_launch=blocks, launches=launches,
                      candidate=kernel_launch.candidates.index(plan), phases_per_step=plan.phases_per_step,
                      resident=plan.resident, projected=plan.projected,
                      resident_chunks=sum(1 for c in plan.chunks + plan.proj_chunks if c))
    return record


def compile_points(points: list[Point], cache_dir: Optional[Path], workers: int = 2) -> list[dict]:
    """One record per launch of every point: the point, the plan kernels.launch would choose on an
    H100 (recurrences: of the planner's first candidates, by their compiled kernels), Compiled's
    fields for it and the programs an SM holds. Each distinct kernel compiles once, `workers` at a
    time, its result cached under cache_dir/<source digest>/."""
    import concurrent.futures
    import multiprocessing

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / source_digest()
        cache.mkdir(parents=True, exist_ok=True)
    entries, jobs = [], {}
    for point in points:
        for index, kernel_launch in enumerate(point_launches(point)):
            plans = kernel_launch.candidates[:launch.RUNTIME_CANDIDATES] or (None,)
            # the choice depends on the grids too (residency), which do not change the compile
            key = tuple((compile_key(kernel_launch.with_plan(p)), p.grid) if p else compile_key(kernel_launch)
                        for p in plans)
            entries.append((point, kernel_launch, key))
            jobs.setdefault(key, (point, index, cache))
    results = {}
    # spawn, not fork: a forked child of a process that has run LLVM or torch threads can hang
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_choose_job, job): key for key, job in jobs.items()}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    records = []
    for point, kernel_launch, key in entries:
        chosen, blocks, compiled = results[key]
        if kernel_launch.plan is not None:
            kernel_launch = kernel_launch.with_plan(kernel_launch.candidates[chosen])
        records.append(_record(point, kernel_launch, compiled, blocks))
    return records


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=Path, required=True, help="JSON list of Point fields")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    started = time.time()
    points = [Point(**fields) for fields in json.loads(options.points.read_text())]
    records = compile_points(points, options.cache, options.workers)
    options.out.write_text(json.dumps({"records": records, "seconds": time.time() - started}))
