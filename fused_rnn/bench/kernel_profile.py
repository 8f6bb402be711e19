"""`fused-rnn profile`: where the time of one layer's forward and backward goes, under torch.profiler.

Every recurrence op runs under its qualified name (the dispatcher records fused_rnn::lstm_forward,
fused_rnn::lstm_backward, ... as ranges), so each profiled op or kernel falls in one group:

    forward recurrence     anything inside a fused_rnn::*_forward range
    backward recurrence    anything inside a fused_rnn::*_backward range
    weight-gradient GEMMs  a GEMM in backward whose result has a weight's shape (dW_ih, dW_hh)
    input GEMM             any other GEMM: the input projection x @ W_ih^T and, in backward,
                           its input gradient dxw @ W_ih (at shapes where T*B equals a weight's
                           row count, dx has a weight's shape too and counts as a weight gradient)
    other                  the rest (copies, bias sums, autograd bookkeeping)

Times are self times (an op's own, its children excluded), so the groups add up to the total: CPU
time on the CPU, kernel time on CUDA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from .shapes import RecurrentShape
from .timing import native_output_silenced

GROUPS = ("input GEMM", "forward recurrence", "backward recurrence", "weight-gradient GEMMs", "other")
GEMM_OPS = (
    "aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "fused_rnn::linear",
)
FORWARD_RANGE = re.compile(r"^fused_rnn::\w+_forward$")
BACKWARD_RANGE = re.compile(r"^fused_rnn::\w+_backward$")
AUTOGRAD_PREFIX = "autograd::engine::evaluate_function"
MODULE_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _gemm_output_shape(name: str, shapes: list) -> Optional[tuple]:
    """The result shape of a GEMM op from its recorded input shapes (None when not recorded)."""
    try:
        if name in ("aten::linear", "fused_rnn::linear"):
            return tuple(shapes[0][:-1]) + (shapes[1][0],)
        if name in ("aten::addmm", "aten::baddbmm"):
            return tuple(shapes[1][:-1]) + (shapes[2][-1],)
        return tuple(shapes[0][:-1]) + (shapes[1][-1],)
    except (IndexError, TypeError):
        return None


def classify(event, weight_shapes: set) -> str:
    """The group of one profiler event (see the module docstring)."""
    chain = []
    node = event
    while node is not None:
        chain.append(node)
        node = node.cpu_parent
    names = [node.name for node in chain]
    if any(FORWARD_RANGE.match(name) for name in names):
        return "forward recurrence"
    if any(BACKWARD_RANGE.match(name) for name in names):
        return "backward recurrence"
    gemms = [node for node in chain if node.name in GEMM_OPS]
    if not gemms:
        return "other"
    outermost = gemms[-1]
    in_backward = any(name.startswith(AUTOGRAD_PREFIX) for name in names)
    if in_backward and _gemm_output_shape(outermost.name, outermost.input_shapes) in weight_shapes:
        return "weight-gradient GEMMs"
    return "input GEMM"


def _self_time_us(event, on_device: bool) -> float:
    if on_device:
        value = getattr(event, "self_device_time_total", None)
        return float(value if value is not None else event.self_cuda_time_total)
    return float(event.self_cpu_time_total)


@dataclass
class GroupTimes:
    """Microseconds per group, and per op (CPU) or kernel (CUDA) name within each group."""

    total_us: dict[str, float] = field(default_factory=lambda: {group: 0.0 for group in GROUPS})
    by_name: dict[str, dict[str, list]] = field(default_factory=lambda: {group: {} for group in GROUPS})

    def add(self, group: str, name: str, microseconds: float) -> None:
        self.total_us[group] += microseconds
        entry = self.by_name[group].setdefault(name, [0.0, 0])
        entry[0] += microseconds
        entry[1] += 1


def group_events(events, weight_shapes: set, on_device: bool) -> GroupTimes:
    """Sum self times of profiler events by group; on a device, kernel by kernel."""
    times = GroupTimes()
    for event in events:
        group = classify(event, weight_shapes)
        if on_device:
            for kernel in getattr(event, "kernels", []):
                times.add(group, kernel.name, float(kernel.duration))
        else:
            microseconds = _self_time_us(event, False)
            if microseconds > 0:
                times.add(group, event.name, microseconds)
    return times


def weight_shapes_of(module: torch.nn.Module) -> set:
    """Every 2-D parameter's shape and its transpose (a weight gradient may be formed either way),
    and for a GRU's W_hh [3H, H] those of its row blocks [2H, H] and [H, H]: its gradient is formed
    in two GEMMs, over the reset and update gates' gradients and over the new gate's."""
    shapes = set()
    for name, parameter in module.named_parameters():
        if parameter.dim() != 2:
            continue
        rows, columns = parameter.shape
        blocks = [rows]
        if getattr(module, "mode", None) == "GRU" and name.startswith("weight_hh"):
            blocks += [2 * rows // 3, rows // 3]
        for block in blocks:
            shapes.update({(block, columns), (columns, block)})
    return shapes


def profile_layer(
    op: str,
    shape: RecurrentShape,
    backend: str = "auto",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    iterations: int = 1,
    trace: Optional[str] = None,
) -> GroupTimes:
    """Profile `iterations` forward+backward passes of one fused_rnn layer (after one warm-up)."""
    import fused_rnn
    from torch.profiler import ProfilerActivity, profile

    if op not in MODULE_NAMES:
        raise ValueError(f"op must be one of {list(MODULE_NAMES)}, got {op!r}")
    device_obj = torch.device(device)
    module = getattr(fused_rnn, MODULE_NAMES[op])(shape.input_size, shape.hidden, backend=backend)
    module.to(device=device_obj, dtype=dtype)
    x = torch.randn(shape.steps, shape.batch, shape.input_size, device=device_obj, dtype=dtype, requires_grad=True)

    def forward_backward() -> None:
        output, _ = module(x)
        output.sum().backward()

    forward_backward()
    on_device = device_obj.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with native_output_silenced(), profile(activities=activities, record_shapes=True) as prof:
        for _ in range(iterations):
            forward_backward()
        if on_device:
            torch.cuda.synchronize(device_obj)
    if trace:
        prof.export_chrome_trace(trace)
    return group_events(prof.events(), weight_shapes_of(module), on_device)


def format_groups(times: GroupTimes, title: str, top: int = 6) -> str:
    """The group table, then the largest ops or kernels of each group."""
    total = sum(times.total_us.values()) or 1.0
    lines = [title, f"  {'group':<24}{'ms':>10}{'share':>8}"]
    for group in GROUPS:
        lines.append(f"  {group:<24}{times.total_us[group] / 1e3:>10.3f}{100 * times.total_us[group] / total:>7.1f}%")
    lines.append(f"  {'total':<24}{total / 1e3:>10.3f}")
    for group in GROUPS:
        ranked = sorted(times.by_name[group].items(), key=lambda item: -item[1][0])[:top]
        if ranked:
            lines.append(f"\n  {group}:")
            for name, (microseconds, count) in ranked:
                lines.append(f"    {microseconds / 1e3:>9.3f} ms  x{count:<6} {name[:90]}")
    return "\n".join(lines)
