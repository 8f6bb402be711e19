"""The recurrence providers: fused_rnn's backends, cuDNN, torch.nn on the CPU, the torch.nn cell
loop eager and under torch.compile, and FlashRNN. fused_rnn's backends also run the attention ops
(through fused_rnn's attention modules, see attention.py).

Every recurrence provider computes one layer, input projection included: x [T, B, I] -> the
output sequence [T, B, H], from zero initial states. torch.nn and fused_rnn's backends also run the
other workloads of shapes.py the same way: a PackedSequence (PackedShape) and stepwise calls of a
module or a cell (StepwiseShape).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from .. import backends
from ..packing import packing_of, padded_from_packed
from . import attention
from .base import Built, Provider, cast
from .shapes import ATTENTION_OPS, RECURRENT_OPS, PackedShape, RecurrentShape, StepwiseShape
from .workloads import Weights, packed_lengths

TORCH_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
TORCH_CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
FUSED_MODULE_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}

# The reference backend is a Python loop of small ops; on the CPU it is timed only up to this many
# T*B*H (the B16-T1024-H768 standard point is 12.6M: seconds per call there).
REFERENCE_CPU_LIMIT = 1 << 22


def _load_module(module: nn.Module, weights: Weights, dtype: torch.dtype, device: torch.device) -> nn.Module:
    module.to(device=device, dtype=dtype)
    module.load_state_dict(cast(weights, dtype, device))
    return module


def packed_run(module: nn.Module, shape: PackedShape) -> Callable[[Tensor], Tensor]:
    """x [T, B, I] packed with the (sorted) lengths of the point at T steps (the full point's or
    its check version's) -> module's output padded to [T, B, H]. The output is padded by one
    scatter, the same for every provider (not pad_packed_sequence, whose backward copies the whole
    output once per distinct length)."""

    def run(x: Tensor) -> Tensor:
        steps = x.shape[0]
        output = module(pack_padded_sequence(x, packed_lengths(replace(shape, steps=steps))))[0]
        packing = packing_of(output.data, output.batch_sizes, shape.batch)
        return padded_from_packed(output.data, packing, steps)

    return run


def _stepwise_run(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """x [T, B, I] -> [T, B, H] by calling module once per step on x[t:t+1], state carried."""

    def run(x: Tensor) -> Tensor:
        state, outputs = None, []
        for x_t in x.split(1):
            output, state = module(x_t, state)
            outputs.append(output[0])
        return torch.stack(outputs)

    return run


def build_workload(
    op: str, shape: RecurrentShape, weights: Weights, dtype: torch.dtype, device: torch.device,
    modules: Callable[..., nn.Module], cells: Callable[..., nn.Module],
) -> Built:
    """A recurrence workload of `shape` (one layer, packed, or stepwise calls) made of
    modules(input_size, hidden_size, num_layers=L) or cells(input_size, hidden_size), the
    classes of torch.nn or of fused_rnn with the point's weights."""
    if isinstance(shape, StepwiseShape) and shape.cell:
        cell = cells(shape.input_size, shape.hidden).to(device=device, dtype=dtype)
        cell.load_state_dict({name.removesuffix("_l0"): w for name, w in cast(weights, dtype, device).items()})
        return Built(run=_cell_loop(cell, cell, op), params=_cell_params(cell))
    layers = shape.layers if isinstance(shape, StepwiseShape) else 1
    module = _load_module(modules(shape.input_size, shape.hidden, num_layers=layers), weights, dtype, device)
    params = dict(module.named_parameters())
    if isinstance(shape, PackedShape):
        return Built(run=packed_run(module, shape), params=params)
    if isinstance(shape, StepwiseShape):
        return Built(run=_stepwise_run(module), params=params)
    return Built(run=lambda x: module(x)[0], params=params)


def plain_layer_only(shape) -> Optional[str]:
    """Why a provider that runs one layer over a padded batch cannot run `shape`, or None."""
    if isinstance(shape, (PackedShape, StepwiseShape)):
        return "runs one layer over a padded batch only (not packed input or stepwise calls)"
    return None


class FusedProvider(Provider):
    """fused_rnn with one backend: fused_rnn.LSTM / GRU / RNN(backend=...), and for the attention
    ops fused_rnn.AdditiveAttention / LuongAttention(backend=...)."""

    ops = RECURRENT_OPS + ATTENTION_OPS

    def __init__(self, backend: str) -> None:
        self.name = backend

    def unavailable_reason(self, op, shape, dtype, device) -> Optional[str]:
        if op in ATTENTION_OPS:
            missing = attention.missing_fused_module(op)
            if missing:
                return missing
        if self.name == "triton" and device.type == "cpu":
            return "Triton runs on the CPU only in its interpreter, which says nothing about kernel speed"
        if self.name == "reference" and device.type == "cpu" and isinstance(shape, RecurrentShape):
            if shape.steps * shape.batch * shape.hidden > REFERENCE_CPU_LIMIT:
                return f"the reference loop is timed on the CPU only up to T*B*H = {REFERENCE_CPU_LIMIT}"
        if op in ATTENTION_OPS:
            from ..attention_ops import attention_unavailable_reason

            return attention_unavailable_reason(self.name, device)
        return backends.unavailable_reason(self.name, device)

    def build(self, op, shape, weights, dtype, device) -> Built:
        if op in ATTENTION_OPS:
            return attention.build_fused(op, shape, weights, dtype, device, self.name)
        import fused_rnn

        module_class = getattr(fused_rnn, FUSED_MODULE_NAMES[op])
        cell_class = getattr(fused_rnn, f"{FUSED_MODULE_NAMES[op]}Cell")
        return build_workload(
            op, shape, weights, dtype, device,
            lambda *sizes, **options: module_class(*sizes, **options, backend=self.name),
            lambda *sizes: cell_class(*sizes, backend=self.name),
        )


class TorchModuleProvider(Provider):
    """torch.nn.LSTM / GRU / RNN on one device type: cuDNN on CUDA, oneDNN/ATen on the CPU."""

    ops = RECURRENT_OPS

    def __init__(self, name: str, device_type: str) -> None:
        self.name = name
        self.devices = (device_type,)

    def build(self, op, shape, weights, dtype, device) -> Built:
        return build_workload(op, shape, weights, dtype, device, TORCH_MODULES[op], TORCH_CELLS[op])


def _cell_loop(cell: nn.Module, step: Callable, op: str) -> Callable[[Tensor], Tensor]:
    """x [T, B, I] -> [T, B, H] by calling step(x[t], state) once per time step."""

    def run(x: Tensor) -> Tensor:
        zeros = x.new_zeros(x.shape[1], cell.hidden_size)
        state = (zeros, zeros) if op == "lstm" else zeros
        outputs = []
        for x_t in x.unbind(0):
            state = step(x_t, state)
            outputs.append(state[0] if op == "lstm" else state)
        return torch.stack(outputs)

    return run


def _cell_params(cell: nn.Module) -> dict[str, Tensor]:
    """The cell's parameters under the layer names of the point's weights (weight_ih -> weight_ih_l0)."""
    return {f"{name}_l0": p for name, p in cell.named_parameters()}


class CellLoopProvider(Provider):
    """torch.nn.LSTMCell / GRUCell / RNNCell called once per step in a Python loop; with
    `compiled`, the cell runs under torch.compile (the loop stays in Python, so compiling does not
    unroll T steps)."""

    ops = RECURRENT_OPS

    def __init__(self, name: str, compiled: bool) -> None:
        self.name = name
        self.compiled = compiled

    def unavailable_reason(self, op, shape, dtype, device) -> Optional[str]:
        return plain_layer_only(shape)

    def build(self, op, shape, weights, dtype, device) -> Built:
        cell = TORCH_CELLS[op](shape.input_size, shape.hidden).to(device=device, dtype=dtype)
        cell.load_state_dict({name.removesuffix("_l0"): w for name, w in cast(weights, dtype, device).items()})
        if self.compiled:
            # Compiled code is cached per code object, with guards on the module instance: drop the
            # previous points' graphs so this one compiles afresh instead of hitting the recompile
            # limit and silently running eager.
            torch.compiler.reset()
        step = torch.compile(cell, dynamic=False) if self.compiled else cell
        return Built(run=_cell_loop(cell, step, op), params=_cell_params(cell))


FLASHRNN_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class FlashRnnProvider(Provider):
    """FlashRNN's fused CUDA LSTM (`pip install flashrnn`), one head of size H, with the input
    projection done by one GEMM beforehand as for every other provider."""

    name = "flashrnn"
    ops = ("lstm",)
    devices = ("cuda",)

    def unavailable_reason(self, op, shape, dtype, device) -> Optional[str]:
        try:
            import flashrnn  # noqa: F401
        except ImportError as error:
            return f"the flashrnn package is not installed ({error}); `pip install flashrnn`"
        if dtype not in FLASHRNN_DTYPES:
            return f"flashrnn has no {dtype} kernels"
        return plain_layer_only(shape)

    def build(self, op, shape, weights, dtype, device) -> Built:
        from flashrnn import flashrnn

        params = cast(weights, dtype, device)
        hidden = shape.hidden

        def run(x: Tensor) -> Tensor:
            steps, batch, _ = x.shape
            wx = F.linear(x, params["weight_ih_l0"]).transpose(0, 1).reshape(batch, steps, 4, 1, hidden)
            recurrent = params["weight_hh_l0"].reshape(4, 1, hidden, hidden)  # [G, heads, H out, H in]
            bias = (params["bias_ih_l0"] + params["bias_hh_l0"]).reshape(4, 1, hidden)
            states, _ = flashrnn(
                wx, recurrent, bias, function="lstm", backend="cuda_fused", dtype=FLASHRNN_DTYPES[dtype]
            )
            return states[0].reshape(batch, steps, hidden).transpose(0, 1)  # h of [S, B, T, 1, H]

        return Built(run=run, params=params)
