"""torch.nn's argument checks for LSTM / GRU / RNN and the cells: the same order, exception types
and messages as torch.nn (its Python modules, then the ATen checks its ops make), so code written
against torch.nn's errors behaves the same.

Where torch.nn has no check of its own and the bad input fails inside a tensor op, the message is
that op's (a dtype mismatch is "mat1 and mat2 must have the same dtype, ..." from the GEMM). Where
torch.nn accepts a bad input and computes something undefined, or fails with an error of an
internal op whose text depends on the kernel it happened to pick, these checks raise a clear error
instead (see tests/test_nn_errors.py for the list of those differences).

The functions called from the modules' forward are TorchScript-compatible; those marked eager are
called only outside TorchScript.
"""

import numbers
import warnings
from typing import List

import torch
from torch import Tensor

SEQUENCE_LENGTH_MESSAGE = "Expected sequence length to be larger than 0 in RNN"

_SCALAR_TYPE_NAMES = {
    torch.float64: "Double",
    torch.float32: "Float",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def matmul_dtype_message(a: torch.dtype, b: torch.dtype) -> str:
    """ATen's GEMM message for operands of different dtypes (eager)."""
    names = [_SCALAR_TYPE_NAMES.get(dtype, str(dtype)) for dtype in (a, b)]
    return f"mat1 and mat2 must have the same dtype, but got {names[0]} and {names[1]}"


# ------------------------------------------------------------------------------------------------
# Constructors (eager)
# ------------------------------------------------------------------------------------------------


def check_layer_arguments(
    mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size
) -> None:
    """torch.nn.RNNBase.__init__'s checks, in its order."""
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=4,
        )
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")
    if proj_size != 0 and mode != "LSTM":
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


# ------------------------------------------------------------------------------------------------
# LSTM / GRU / RNN forward
# ------------------------------------------------------------------------------------------------


def check_input_rank(name: str, input: Tensor) -> None:
    """torch.nn's first check of a padded input: 2-D (unbatched) or 3-D. `name` is "RNN", "LSTM"
    or "GRU"; torch.nn.RNN's message alone says "tensor"."""
    if input.dim() != 2 and input.dim() != 3:
        noun = "D tensor" if name == "RNN" else "D"
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}{noun} instead")


def check_state_ranks(mode: str, states: List[Tensor], batched: bool) -> None:
    """hx (and cx) must have the input's rank: 3-D for batched input, 2-D for unbatched."""
    want = 3 if batched else 2
    kind = "batched 3-D" if batched else "unbatched 2-D"
    if mode == "LSTM":
        if states[0].dim() != want or states[1].dim() != want:
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {want}-D but got "
                f"({states[0].dim()}-D, {states[1].dim()}-D) tensors"
            )
    elif states[0].dim() != want:
        raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {states[0].dim()}-D tensor")


def check_input(
    input: Tensor, weight_dtype: torch.dtype, input_size: int, packed: bool, packed_dtype_in_gemm: bool
) -> None:
    """torch.nn.RNNBase.check_input: dtype (skipped under autocast), rank, feature size.
    `packed_dtype_in_gemm`: torch.nn.LSTM runs no checks on packed input, so a dtype mismatch
    there surfaces from the input GEMM."""
    if not torch.jit.is_scripting():
        if input.dtype != weight_dtype and not torch.is_autocast_enabled(input.device.type):
            if packed_dtype_in_gemm:
                raise RuntimeError(matmul_dtype_message(input.dtype, weight_dtype))
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: model.to({input.dtype})"
            )
    expected_dim = 2 if packed else 3
    if input.dim() != expected_dim:
        raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
    if input.size(-1) != input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {input_size}, got {input.size(-1)}"
        )


def _tuple_text(sizes: List[int]) -> str:
    return "(" + ", ".join([str(size) for size in sizes]) + ")"


def check_state_sizes(mode: str, states: List[Tensor], expected: List[List[int]]) -> None:
    """torch.nn's check_hidden_size of h (and c): "Expected hidden size (L*D, B, P), got [...]"."""
    for index in range(len(expected)):
        got = states[index].size()
        if list(got) != expected[index]:
            what = "hidden" if mode != "LSTM" else f"hidden[{index}]"
            raise RuntimeError(f"Expected {what} size {_tuple_text(expected[index])}, got {list(got)}")


def check_state_count(mode: str, count: int) -> None:
    if mode == "LSTM" and count != 2:
        raise RuntimeError("lstm expects two hidden states")


def check_devices(input: Tensor, states: List[Tensor], weights: List[Tensor]) -> None:
    """ATen's check_attributes: the states, then every parameter, on the input's device."""
    for name, tensors in (("hidden", states), ("parameter", weights)):
        for tensor in tensors:
            if tensor.device != input.device:
                raise RuntimeError(
                    f"Input and {name} tensors are not at the same device, found input tensor at "
                    f"{input.device} and {name} tensor at {tensor.device}"
                )


def check_state_dtypes(states: List[Tensor], weight_dtype: torch.dtype) -> None:
    """A state of another dtype than the weights fails in torch.nn's first recurrent GEMM (eager;
    under autocast the states are cast)."""
    if torch.is_autocast_enabled(states[0].device.type):
        return
    for state in states:
        if state.dtype != weight_dtype:
            raise RuntimeError(matmul_dtype_message(state.dtype, weight_dtype))


def check_batch_sizes(data: Tensor, batch_sizes: Tensor) -> None:
    """A PackedSequence built by hand must still describe rows of lengths >= 1, sorted by length
    (eager; torch.nn does not check, and fails inside its kernels or reads past the data)."""
    sizes = batch_sizes
    if sizes.dim() != 1 or sizes.dtype != torch.int64 or sizes.device.type != "cpu" or sizes.numel() == 0:
        raise RuntimeError(
            "PackedSequence batch_sizes must be a non-empty 1-D int64 CPU tensor, got a "
            f"{sizes.dim()}-D {sizes.dtype} tensor of {sizes.numel()} elements on {sizes.device}"
        )
    values = batch_sizes.tolist()
    if values[-1] < 1 or any(later > earlier for earlier, later in zip(values, values[1:])):
        raise RuntimeError(
            "PackedSequence batch_sizes must be positive and non-increasing (every row at least one "
            f"step long, rows sorted by decreasing length), got {values}"
        )
    if sum(values) != data.shape[0]:
        raise RuntimeError(
            f"PackedSequence data must have sum(batch_sizes) = {sum(values)} rows, got {data.shape[0]}"
        )


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------


def check_cell_input_rank(name: str, input: Tensor) -> None:
    if input.dim() != 1 and input.dim() != 2:
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")


def check_cell_state_rank(name: str, label: str, state: Tensor) -> None:
    """`label`: "hidden" (RNNCell, GRUCell) or "hx[0]", "hx[1]" (LSTMCell)."""
    if state.dim() != 1 and state.dim() != 2:
        raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {state.dim()}D instead")


def check_cell_step(input: Tensor, states: List[Tensor], input_size: int, hidden_size: int) -> None:
    """ATen's check_rnn_cell_forward_input and _hidden, in order: the input's feature size, then
    per state its batch size and hidden size. input [B, I]; states as torch.nn passes them on."""
    if input.size(1) != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {input_size}")
    for index in range(len(states)):
        state = states[index]
        if input.size(0) != state.size(0):
            raise RuntimeError(
                f"Input batch size {input.size(0)} doesn't match hidden{index} batch size {state.size(0)}"
            )
        if state.size(1) != hidden_size:
            raise RuntimeError(
                f"hidden{index} has inconsistent hidden_size: got {state.size(1)}, expected {hidden_size}"
            )


def check_cell_dtypes(input: Tensor, hidden: Tensor, weight_dtype: torch.dtype) -> None:
    """torch.nn's cells have no dtype check: a mismatch fails in the input GEMM, then in the
    hidden GEMM (eager; under autocast the GEMMs cast)."""
    if torch.is_autocast_enabled(input.device.type):
        return
    for operand in (input, hidden):
        if operand.dtype != weight_dtype:
            raise RuntimeError(matmul_dtype_message(operand.dtype, weight_dtype))
