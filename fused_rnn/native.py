"""The `native` backend: the C++ (CPU) and CUDA recurrence kernels of the extension fused_rnn._C.

The functions below have the signatures, outputs and saved tensors of `fused_rnn.reference` and call
the C++ ops `torch.ops.fused_rnn.native_*` (schemas in csrc/ops.cpp). This module also registers
the ops' fake functions, so that they trace under torch.compile and pass torch.library.opcheck.
Autograd is not defined here: the custom ops of `fused_rnn.ops` own it for every backend.

When fused_rnn._C is missing (not built, or built against another torch), importing this module
still works; `unavailable_reason` says why and how to build it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import attention_ops, ops, packed_ops

try:
    from . import _C
except ImportError as error:
    _C = None
    _IMPORT_ERROR = str(error)
else:
    _IMPORT_ERROR = None

OP_NAMES = (
    *(f"native_{cell}_{direction}" for cell in ("rnn", "lstm", "gru") for direction in ("forward", "backward")),
    "native_lstm_inference",
    "native_gru_inference",
)
PACKED_OP_NAMES = (
    *(f"native_{cell}_packed_{direction}" for cell in ("rnn", "lstm", "gru") for direction in ("forward", "backward")),
    "native_lstm_packed_inference",
    "native_gru_packed_inference",
)
ATTENTION_OP_NAMES = tuple(
    f"native_{score}_attention_{direction}" for score in ("additive", "dot") for direction in ("forward", "backward")
)
_HOW_TO_BUILD = (
    "build it with `pip install --no-build-isolation -e .` (needs a C++ compiler, and nvcc for CUDA; "
    "add -v to see why a build failed)"
)


def build_info() -> Optional[dict]:
    """How fused_rnn._C was built (torch_version, compiler, cpu_kernels, cpu_mkl_tuned, cpu_gemm,
    cpu_gemm_float64, with_cuda, cuda_version, cuda_archs), or None when it is not importable."""
    return None if _C is None else _C.build_info()


def _ops_without_kernel(dispatch_key: str, op_names: tuple[str, ...]) -> list[str]:
    return [
        name
        for name in op_names
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_rnn::{name}", dispatch_key)
    ]


def unavailable_reason(device: torch.device, op_names: tuple[str, ...] = OP_NAMES) -> Optional[str]:
    """None when the native kernels of `op_names` (by default the recurrence ops) can run on
    `device`, else a sentence saying why not."""
    device = torch.device(device)
    if _C is None:
        return f"the extension fused_rnn._C could not be imported ({_IMPORT_ERROR}); {_HOW_TO_BUILD}"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"the native backend runs on CPU and CUDA tensors, not {device.type}"
    if not _C.build_info()["with_cuda"]:
        return (
            "fused_rnn._C was built without CUDA (torch without CUDA, or nvcc missing at build "
            f"time); {_HOW_TO_BUILD} on a machine with both"
        )
    missing = _ops_without_kernel("CUDA", op_names)
    if missing:
        return (
            "the CUDA kernels of the native backend are not built yet "
            f"(no CUDA kernel for {', '.join(missing)})"
        )
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return _compute_capability_reason(device)


def _compute_capability_reason(device: torch.device) -> Optional[str]:
    """Why the compiled CUDA kernels cannot run on `device`'s GPU, or None: they need compute
    capability 8.0 (mma.sync on bf16, cp.async), and machine code or PTX for an architecture no
    newer than the GPU's."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    if capability < (8, 0):
        return (
            f"the native CUDA kernels need compute capability 8.0 or newer; {name} has "
            f"{capability[0]}.{capability[1]}"
        )
    compiled = [tuple(int(part) for part in arch.split(".")) for arch in _C.build_info()["cuda_archs"]]
    if compiled and all(arch > capability for arch in compiled):
        archs = ", ".join(_C.build_info()["cuda_archs"])
        return (
            f"fused_rnn._C was compiled for compute capability {archs}, newer than {name}'s "
            f"{capability[0]}.{capability[1]}; rebuild on this machine (or with "
            f"FUSED_RNN_CUDA_ARCHS={capability[0]}.{capability[1]})"
        )
    return None


def attention_unavailable_reason(device: torch.device) -> Optional[str]:
    """unavailable_reason for the attention ops, whose CUDA kernels are registered apart from the
    recurrence's."""
    return unavailable_reason(device, ATTENTION_OP_NAMES)


def _native_ops():
    if _C is None:
        raise RuntimeError(f"fused_rnn native backend: {unavailable_reason(torch.device('cpu'))}")
    return torch.ops.fused_rnn


def cpu_buffer_pool() -> dict:
    """The pool of the native CPU ops' buffers larger than 1 MiB (the input projection, hs, the
    saved gates and cell states, their gradients, the weight gradients): freed blocks are kept for
    later calls instead of going back to the system and being faulted in afresh, which costs more
    than the math at large sizes. Returns
    cached_bytes (held unused), in_use_bytes and limit_bytes, the most it holds unused
    (FUSED_RNN_CPU_CACHE_MB MiB at start-up, default a quarter of physical memory)."""
    _native_ops()
    return dict(_C.cpu_buffer_pool_stats())


def set_cpu_buffer_pool_limit(limit_bytes: int) -> None:
    """Sets the most bytes the CPU buffer pool holds unused (0: it holds none), unmapping the
    least recently freed blocks beyond it."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
        raise ValueError(f"limit_bytes must be a non-negative int, got {limit_bytes!r}")
    _native_ops()
    _C.set_cpu_buffer_pool_limit(limit_bytes)


def empty_cpu_buffer_pool() -> None:
    """Unmaps every block the CPU buffer pool holds unused (as torch.cuda.empty_cache does);
    blocks in use return to the pool when their tensors are freed."""
    _native_ops()
    _C.empty_cpu_buffer_pool()


# ----------------------------------------------------------------------------------------------
# The six functions of a backend (see fused_rnn.reference for shapes and saved tensors) and the
# inference variants of the LSTM and GRU forward functions (see fused_rnn.ops).
# ----------------------------------------------------------------------------------------------


def rnn_forward(
    xw: Tensor, w_hh: Tensor, h0: Tensor, lengths: Optional[Tensor], relu: bool
) -> tuple[Tensor, Tensor]:
    return tuple(_native_ops().native_rnn_forward(xw, w_hh, h0, lengths, relu))


def rnn_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    return tuple(_native_ops().native_rnn_backward(grad_hs, grad_h_n, w_hh, h0, lengths, hs, relu))


def lstm_forward(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_lstm_forward(xw, w_hh, w_hr, h0, c0, lengths))


def lstm_inference(
    xw: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_lstm_inference(xw, w_hh, w_hr, h0, c0, lengths))


def lstm_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        _native_ops().native_lstm_backward(
            grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, lengths, hs, cs, gates
        )
    )


def lstm_input_inference(
    x: Tensor,
    w_ih: Tensor,
    bias: Optional[Tensor],
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_inference of x [T, B, I] @ w_ih^T + bias (CPU): one C++ op, which runs the projection
    inside the steps where each thread has rows of its own (csrc/cpu/lstm.cpp, runs_input_inside)."""
    return tuple(_native_ops().native_lstm_input_inference(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths))


def gru_forward(
    xw: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_gru_forward(xw, w_hh, b_hn, h0, lengths))


def gru_inference(
    xw: Tensor, w_hh: Tensor, b_hn: Optional[Tensor], h0: Tensor, lengths: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    return tuple(_native_ops().native_gru_inference(xw, w_hh, b_hn, h0, lengths))


def gru_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    lengths: Optional[Tensor],
    hs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(
        _native_ops().native_gru_backward(grad_hs, grad_h_n, w_hh, b_hn, h0, lengths, hs, gates)
    )


# The packed-input functions (fused_rnn.packed_ops: the arguments of the padded ones, per-step
# tensors [N, .] and batch_sizes in place of lengths), CPU only: fused_rnn.packed_ops runs them
# for CPU tensors.


def rnn_packed_forward(
    xw: Tensor, w_hh: Tensor, h0: Tensor, batch_sizes: Tensor, relu: bool
) -> tuple[Tensor, Tensor]:
    return tuple(_native_ops().native_rnn_packed_forward(xw, w_hh, h0, batch_sizes, relu))


def rnn_packed_backward(
    grad_hs: Tensor, grad_h_n: Tensor, w_hh: Tensor, h0: Tensor, batch_sizes: Tensor, hs: Tensor, relu: bool
) -> tuple[Tensor, Tensor]:
    return tuple(_native_ops().native_rnn_packed_backward(grad_hs, grad_h_n, w_hh, h0, batch_sizes, hs, relu))


def lstm_packed_forward(
    xw: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], h0: Tensor, c0: Tensor, batch_sizes: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_lstm_packed_forward(xw, w_hh, w_hr, h0, c0, batch_sizes))


def lstm_packed_inference(
    xw: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], h0: Tensor, c0: Tensor, batch_sizes: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_lstm_packed_inference(xw, w_hh, w_hr, h0, c0, batch_sizes))


def lstm_packed_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    grad_c_n: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor,
    hs: Tensor,
    cs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        _native_ops().native_lstm_packed_backward(
            grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, batch_sizes, hs, cs, gates
        )
    )


def lstm_packed_input_inference(
    x: Tensor,
    w_ih: Tensor,
    bias: Optional[Tensor],
    w_hh: Tensor,
    w_hr: Optional[Tensor],
    h0: Tensor,
    c0: Tensor,
    batch_sizes: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """lstm_input_inference on packed rows x [N, I] (CPU)."""
    return tuple(
        _native_ops().native_lstm_packed_input_inference(x, w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes)
    )


def gru_packed_forward(
    xw: Tensor, w_hh: Tensor, b_hn: Optional[Tensor], h0: Tensor, batch_sizes: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_gru_packed_forward(xw, w_hh, b_hn, h0, batch_sizes))


def gru_packed_inference(
    xw: Tensor, w_hh: Tensor, b_hn: Optional[Tensor], h0: Tensor, batch_sizes: Tensor
) -> tuple[Tensor, Tensor]:
    return tuple(_native_ops().native_gru_packed_inference(xw, w_hh, b_hn, h0, batch_sizes))


def gru_packed_backward(
    grad_hs: Tensor,
    grad_h_n: Tensor,
    w_hh: Tensor,
    b_hn: Optional[Tensor],
    h0: Tensor,
    batch_sizes: Tensor,
    hs: Tensor,
    gates: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(
        _native_ops().native_gru_packed_backward(grad_hs, grad_h_n, w_hh, b_hn, h0, batch_sizes, hs, gates)
    )


def linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """x [M, K] @ w [N, K]^T + b ([N], [M, N] or None) -> [M, N]: on the CPU the C++ GEMM
    (oneDNN for float32, the sequence kernels' panel GEMM for float64, see csrc/cpu/gemm.h),
    elsewhere torch's."""
    if x.device.type != "cpu":
        return x @ w.t() if b is None else torch.addmm(b, x, w.t())
    return _native_ops().native_linear(x, w, b)


# ----------------------------------------------------------------------------------------------
# Fake functions of the C++ ops. The forward ops have the fake functions of the matching
# fused_rnn::*_forward ops (called on the fake tensors); the backward ops' outputs have the shapes
# of the tensors they are gradients of.
# ----------------------------------------------------------------------------------------------


def _register_fakes() -> None:
    register = torch.library.register_fake

    @register("fused_rnn::native_rnn_forward")
    def _(xw, w_hh, h0, lengths, relu):
        return ops.rnn_forward(xw, w_hh, h0, lengths, relu, "native")

    @register("fused_rnn::native_rnn_backward")
    def _(grad_hs, grad_h_n, w_hh, h0, lengths, hs, relu):
        return torch.empty_like(hs), torch.empty_like(h0)

    @register("fused_rnn::native_lstm_forward")
    def _(xw, w_hh, w_hr, h0, c0, lengths):
        return ops.lstm_forward(xw, w_hh, w_hr, h0, c0, lengths, "native")

    @register("fused_rnn::native_lstm_inference")
    def _(xw, w_hh, w_hr, h0, c0, lengths):
        return ops.lstm_inference(xw, w_hh, w_hr, h0, c0, lengths, "native")

    @register("fused_rnn::native_lstm_input_inference")
    def _(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths):
        return ops.lstm_input_inference(x, w_ih, bias, w_hh, w_hr, h0, c0, lengths, "native")

    @register("fused_rnn::native_lstm_backward")
    def _(grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, lengths, hs, cs, gates):
        dw_hr = grad_hs.new_empty(0) if w_hr is None else torch.empty_like(w_hr)
        return torch.empty_like(gates), torch.empty_like(h0), torch.empty_like(c0), dw_hr

    @register("fused_rnn::native_gru_forward")
    def _(xw, w_hh, b_hn, h0, lengths):
        return ops.gru_forward(xw, w_hh, b_hn, h0, lengths, "native")

    @register("fused_rnn::native_gru_inference")
    def _(xw, w_hh, b_hn, h0, lengths):
        return ops.gru_inference(xw, w_hh, b_hn, h0, lengths, "native")

    @register("fused_rnn::native_gru_backward")
    def _(grad_hs, grad_h_n, w_hh, b_hn, h0, lengths, hs, gates):
        return gates.new_empty(*hs.shape[:2], 3 * hs.shape[2]), torch.empty_like(hs), torch.empty_like(h0)

    @register("fused_rnn::native_rnn_packed_forward")
    def _(xw, w_hh, h0, batch_sizes, relu):
        return packed_ops.rnn_packed_forward(xw, w_hh, h0, batch_sizes, relu, "native")

    @register("fused_rnn::native_rnn_packed_backward")
    def _(grad_hs, grad_h_n, w_hh, h0, batch_sizes, hs, relu):
        return torch.empty_like(hs), torch.empty_like(h0)

    @register("fused_rnn::native_lstm_packed_forward")
    def _(xw, w_hh, w_hr, h0, c0, batch_sizes):
        return packed_ops.lstm_packed_forward(xw, w_hh, w_hr, h0, c0, batch_sizes, "native")

    @register("fused_rnn::native_lstm_packed_inference")
    def _(xw, w_hh, w_hr, h0, c0, batch_sizes):
        return packed_ops.lstm_packed_inference(xw, w_hh, w_hr, h0, c0, batch_sizes, "native")

    @register("fused_rnn::native_lstm_packed_input_inference")
    def _(x, w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes):
        return packed_ops.lstm_packed_input_inference(x, w_ih, bias, w_hh, w_hr, h0, c0, batch_sizes, "native")

    @register("fused_rnn::native_lstm_packed_backward")
    def _(grad_hs, grad_h_n, grad_c_n, w_hh, w_hr, h0, c0, batch_sizes, hs, cs, gates):
        dw_hr = grad_hs.new_empty(0) if w_hr is None else torch.empty_like(w_hr)
        return torch.empty_like(gates), torch.empty_like(h0), torch.empty_like(c0), dw_hr

    @register("fused_rnn::native_gru_packed_forward")
    def _(xw, w_hh, b_hn, h0, batch_sizes):
        return packed_ops.gru_packed_forward(xw, w_hh, b_hn, h0, batch_sizes, "native")

    @register("fused_rnn::native_gru_packed_inference")
    def _(xw, w_hh, b_hn, h0, batch_sizes):
        return packed_ops.gru_packed_inference(xw, w_hh, b_hn, h0, batch_sizes, "native")

    @register("fused_rnn::native_gru_packed_backward")
    def _(grad_hs, grad_h_n, w_hh, b_hn, h0, batch_sizes, hs, gates):
        return gates.new_empty(hs.shape[0], 3 * hs.shape[1]), torch.empty_like(hs), torch.empty_like(h0)

    @register("fused_rnn::native_linear")
    def _(x, w, b):
        return ops.linear(x, w, b, "native")

    # The single-step ops (csrc/cpu/single_step.cpp): x [1, B, I] projected, one step of the op.
    def step_xw(x, w_ih):
        return x.new_empty(*x.shape[:2], w_ih.shape[0])

    def step_grads(x, w_ih, w_hh, bias, output_mask):
        gate_rows = w_ih.shape[0]
        shapes = (x.shape, w_ih.shape, (gate_rows,) if bias else None, w_hh.shape, (gate_rows,) if bias else None)
        return [x.new_empty(shape) if wanted and shape is not None else None for shape, wanted in zip(shapes, output_mask)]

    @register("fused_rnn::native_rnn_step_forward")
    def _(x, w_ih, b_ih, w_hh, b_hh, h0, relu):
        return ops.rnn_forward(step_xw(x, w_ih), w_hh, h0, None, relu, "native")

    @register("fused_rnn::native_rnn_step_backward")
    def _(grad_hs, grad_h_n, x, w_ih, w_hh, bias, h0, hs, relu, output_mask):
        return (*step_grads(x, w_ih, w_hh, bias, output_mask), torch.empty_like(h0))

    @register("fused_rnn::native_lstm_step_forward")
    def _(x, w_ih, b_ih, w_hh, b_hh, h0, c0, save):
        hs, h_n, c_n, cs, gates = ops.lstm_forward(step_xw(x, w_ih), w_hh, None, h0, c0, None, "native")
        return (hs, h_n, c_n, cs, gates) if save else (hs, h_n, c_n, None, None)

    @register("fused_rnn::native_lstm_step_backward")
    def _(grad_hs, grad_h_n, grad_c_n, x, w_ih, w_hh, bias, h0, c0, hs, cs, gates, output_mask):
        return (*step_grads(x, w_ih, w_hh, bias, output_mask), torch.empty_like(h0), torch.empty_like(c0))

    @register("fused_rnn::native_gru_step_forward")
    def _(x, w_ih, b_ih, w_hh, b_hh, h0, save):
        b_hn = None if b_ih is None or b_hh is None else b_hh[2 * w_hh.shape[1] :]
        hs, h_n, gates = ops.gru_forward(step_xw(x, w_ih), w_hh, b_hn, h0, None, "native")
        return (hs, h_n, gates) if save else (hs, h_n, None)

    @register("fused_rnn::native_gru_step_backward")
    def _(grad_hs, grad_h_n, x, w_ih, w_hh, b_hh, h0, hs, gates, output_mask):
        return (*step_grads(x, w_ih, w_hh, b_hh is not None, output_mask), torch.empty_like(h0))


if _C is not None:
    _register_fakes()


# ----------------------------------------------------------------------------------------------
# Attention scoring (shapes and conventions: fused_rnn.reference, section "attention"), called by
# the fused_rnn::*_attention_* ops of fused_rnn.attention_ops. The C++ ops have CPU kernels and,
# when built with CUDA, CUDA kernels; their fake functions are those of the attention_ops ops.
# ----------------------------------------------------------------------------------------------


def additive_attention_forward(
    pq: Tensor, pk: Tensor, v: Tensor, values: Tensor, key_lengths: Optional[Tensor], need_weights: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_additive_attention_forward(pq, pk, v, values, key_lengths, need_weights))


def additive_attention_backward(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    pq: Tensor,
    pk: Tensor,
    v: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    weights: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(
        _native_ops().native_additive_attention_backward(
            grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse, weights
        )
    )


def dot_attention_forward(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    scale: float,
    need_weights: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_native_ops().native_dot_attention_forward(query, keys, values, key_lengths, scale, need_weights))


def dot_attention_backward(
    grad_context: Tensor,
    grad_weights: Optional[Tensor],
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    key_lengths: Optional[Tensor],
    context: Tensor,
    lse: Tensor,
    weights: Optional[Tensor],
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(
        _native_ops().native_dot_attention_backward(
            grad_context, grad_weights, query, keys, values, key_lengths, context, lse, weights, scale
        )
    )


def _register_attention_fakes() -> None:
    register = torch.library.register_fake

    @register("fused_rnn::native_additive_attention_forward")
    def _(pq, pk, v, values, key_lengths, need_weights):
        return attention_ops.additive_attention_forward(pq, pk, v, values, key_lengths, need_weights, "native")

    @register("fused_rnn::native_additive_attention_backward")
    def _(grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse, weights):
        return attention_ops.additive_attention_backward(
            grad_context, grad_weights, pq, pk, v, values, key_lengths, context, lse, weights, "native"
        )

    @register("fused_rnn::native_dot_attention_forward")
    def _(query, keys, values, key_lengths, scale, need_weights):
        return attention_ops.dot_attention_forward(query, keys, values, key_lengths, scale, need_weights, "native")

    @register("fused_rnn::native_dot_attention_backward")
    def _(grad_context, grad_weights, query, keys, values, key_lengths, context, lse, weights, scale):
        return attention_ops.dot_attention_backward(
            grad_context, grad_weights, query, keys, values, key_lengths, context, lse, weights, scale, "native"
        )


if _C is not None:
    _register_attention_fakes()
