"""Drop-in replacements for torch.nn.LSTM / GRU / RNN and their cells.

Constructor arguments, parameter names and shapes, initialisation (same random draws in the same
order), forward signature, outputs and error types are torch.nn's, so state dicts load both ways.
The one addition is the keyword-only `backend` ("auto", "reference", "triton", "native"), also a
settable attribute. These classes do not subclass torch.nn.RNNBase: torch.compile refuses to trace
those classes, and traces these.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import functional
from .backends import check_backend_name, resolve_backend
from .functional import LayerWeights
from .packing import padded_from_packed

HiddenState = Union[Tensor, tuple[Tensor, Tensor]]


class _BackendMixin:
    """The `backend` attribute, checked on assignment and resolved per device on use."""

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = check_backend_name(name)

    def _resolved_backend(self, device: torch.device) -> str:
        return resolve_backend(self._backend, device)


def _check_dropout(dropout, num_layers: int) -> None:
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            f"element being zeroed, got {dropout!r}"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=3,
        )


def _check_sizes(input_size, hidden_size, num_layers, bias, batch_first, proj_size) -> None:
    for name, value in (("bias", bias), ("batch_first", batch_first)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero, got {value}")
    if num_layers <= 0:
        raise ValueError(f"num_layers must be greater than zero, got {num_layers}")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
            f"and hidden_size={hidden_size}"
        )


def _check_batch_sizes(packed: PackedSequence) -> None:
    """A PackedSequence built by hand must still describe rows of lengths >= 1, sorted by length."""
    sizes = packed.batch_sizes
    if sizes.dim() != 1 or sizes.dtype != torch.int64 or sizes.device.type != "cpu" or sizes.numel() == 0:
        raise RuntimeError(
            "PackedSequence batch_sizes must be a non-empty 1-D int64 CPU tensor, got a "
            f"{sizes.dim()}-D {sizes.dtype} tensor of {sizes.numel()} elements on {sizes.device}"
        )
    values = sizes.tolist()
    if values[-1] < 1 or any(later > earlier for earlier, later in zip(values, values[1:])):
        raise RuntimeError(
            "PackedSequence batch_sizes must be positive and non-increasing (every row at least one "
            f"step long, rows sorted by decreasing length), got {values}"
        )
    if sum(values) != packed.data.shape[0]:
        raise RuntimeError(
            f"PackedSequence data must have sum(batch_sizes) = {sum(values)} rows, got {packed.data.shape[0]}"
        )


def _padded_from_packed(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """PackedSequence -> padded [T, B, F] in the packed (length-sorted) order, lengths [B] (CPU)."""
    _check_batch_sizes(packed)
    return padded_from_packed(packed.data, packed.batch_sizes)


def _torch_nn_output_dtype(mode: str, cell: bool, computed: Tensor, state: Tensor) -> torch.dtype:
    """The dtype torch.nn returns where it differs from the dtype the ops computed in: under CPU
    autocast torch.nn's GRU and its LSTM and GRU cells update the state with pointwise ops that
    promote the autocast-dtype gates with the state's dtype (float32 unless given otherwise), while
    its LSTM (oneDNN) and vanilla RNN stay in the autocast dtype."""
    promotes = mode == "GRU" or (cell and mode == "LSTM")
    if promotes and computed.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.promote_types(computed.dtype, state.dtype)
    return computed.dtype


class _RNNBase(_BackendMixin, nn.Module):
    """Shared machinery of LSTM, GRU and RNN (mirrors torch.nn.RNNBase without subclassing it)."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_dropout(dropout, num_layers)
        _check_sizes(input_size, hidden_size, num_layers, bias, batch_first, proj_size)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        gate_size = functional.GATES[mode] * hidden_size
        state_size = proj_size if proj_size > 0 else hidden_size
        directions = 2 if bidirectional else 1
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else state_size * directions
            for direction in range(directions):
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, state_size))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for stem, shape in shapes:
                    name = f"{stem}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """The size of the hidden state h (proj_size for a projected LSTM)."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """Accepted for torch.nn compatibility; the weights need no flattening here."""

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.backend != "auto":
            s += ", backend={_backend!r}"
        return s.format(**self.__dict__)

    def _layer_weights(self) -> list[list[LayerWeights]]:
        layers = []
        for layer in range(self.num_layers):
            directions = []
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                get = lambda stem: getattr(self, stem + suffix, None)  # noqa: E731
                directions.append(
                    LayerWeights(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr"))
                )
            layers.append(directions)
        return layers

    # -- argument checks (torch.nn's messages and exception types) ----------------------------

    def _check_input(self, input: Tensor, packed: bool) -> None:
        weight_dtype = self.weight_ih_l0.dtype
        if input.dtype != weight_dtype and not torch.is_autocast_enabled(input.device.type):
            raise ValueError(
                f"{self.mode} input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: model.to({input.dtype})"
            )
        expected_dim = 2 if packed else 3
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if input.size(-1) != self.input_size:
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {input.size(-1)}"
            )

    def _expected_state_shapes(self, batch: int) -> list[tuple[int, int, int]]:
        slots = self.num_layers * self.num_directions
        shapes = [(slots, batch, self.state_size)]
        if self.mode == "LSTM":
            shapes.append((slots, batch, self.hidden_size))
        return shapes

    def _check_state(self, states: list[Tensor], batch: int, input: Tensor) -> None:
        names = ["hidden size", "cell size"]
        for name, state, shape in zip(names, states, self._expected_state_shapes(batch)):
            if tuple(state.shape) != shape:
                raise RuntimeError(f"Expected {name} {shape}, got {list(state.shape)}")
            if state.device != input.device:
                raise RuntimeError(
                    f"Input and {name.split()[0]} state tensors are not at the same device, "
                    f"found input tensor at {input.device} and hidden tensor at {state.device}"
                )
            if state.dtype != input.dtype:
                raise RuntimeError(
                    f"Expected {name.split()[0]} state dtype {input.dtype} (the input dtype), got {state.dtype}"
                )

    # -- forward ------------------------------------------------------------------------------

    def _initial_states(self, hx: Optional[HiddenState], batched: bool, input: Tensor, batch: int) -> list[Tensor]:
        if hx is None:
            return [input.new_zeros(shape) for shape in self._expected_state_shapes(batch)]
        states = list(hx) if self.mode == "LSTM" else [hx]
        want = 3 if batched else 2
        if any(s.dim() != want for s in states):
            dims = ", ".join(f"{s.dim()}-D" for s in states)
            names = "hx and cx" if self.mode == "LSTM" else "hx"
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(f"For {kind} input, {names} should also be {want}-D but got ({dims}) tensors")
        return states if batched else [s.unsqueeze(1) for s in states]

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[HiddenState] = None):
        packed = isinstance(input, PackedSequence)
        if packed:
            self._check_input(input.data, packed=True)
            x, lengths_cpu = _padded_from_packed(input)
            batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1 if not self.batch_first else 0)
            self._check_input(x, packed=False)
            if self.batch_first:
                x = x.transpose(0, 1)
            if x.shape[0] == 0:
                raise RuntimeError(
                    f"Expected sequence length to be larger than 0 in {self.mode}, got input of shape "
                    f"{list(input.shape)}"
                )
            lengths_cpu = None
        batch = x.shape[1]
        states = self._initial_states(hx, batched, x, batch)
        self._check_state(states, batch, x)
        if packed and input.sorted_indices is not None:
            states = [s.index_select(1, input.sorted_indices) for s in states]

        lengths = None
        if lengths_cpu is not None and int(lengths_cpu.min()) < x.shape[0]:
            lengths = lengths_cpu.to(device=x.device)
        output, h_n, c_n = functional.run_layers(
            self.mode,
            x,
            self._layer_weights(),
            states[0],
            states[1] if self.mode == "LSTM" else None,
            lengths,
            self.dropout,
            self.training,
            self._resolved_backend(x.device),
        )
        finals = [h_n] if c_n is None else [h_n, c_n]
        dtype = _torch_nn_output_dtype(self.mode, False, output, states[0])
        output, finals = output.to(dtype), [s.to(dtype) for s in finals]

        if packed:
            data = pack_padded_sequence(output, lengths_cpu).data
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            if input.unsorted_indices is not None:
                finals = [s.index_select(1, input.unsorted_indices) for s in finals]
        else:
            if self.batch_first:
                output = output.transpose(0, 1)
            if not batched:
                output = output.squeeze(0 if self.batch_first else 1)
                finals = [s.squeeze(1) for s in finals]
        return output, (finals[0] if len(finals) == 1 else tuple(finals))


class LSTM(_RNNBase):
    """torch.nn.LSTM's interface over the fused recurrence ops (see torch.nn.LSTM for arguments)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend)


class GRU(_RNNBase):
    """torch.nn.GRU's interface over the fused recurrence ops (see torch.nn.GRU for arguments)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: str = "auto") -> None:
        _check_no_projection(proj_size)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, backend=backend)


class RNN(_RNNBase):
    """torch.nn.RNN's interface over the fused recurrence ops (see torch.nn.RNN for arguments)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None, *,
                 backend: str = "auto") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        _check_no_projection(proj_size)
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype,
                         backend=backend)


def _check_no_projection(proj_size: int) -> None:
    """torch.nn.GRU and RNN take proj_size (in torch.nn.LSTM's position) only to refuse it."""
    if proj_size != 0:
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


# ------------------------------------------------------------------------------------------------
# Cells: one time step through the same ops (T = 1).
# ------------------------------------------------------------------------------------------------


class _RNNCellBase(_BackendMixin, nn.Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__()
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        gate_size = functional.GATES[mode] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((gate_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gate_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gate_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gate_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        if self.backend != "auto":
            s += ", backend={_backend!r}"
        return s.format(**self.__dict__)

    def _step(self, input: Tensor, hx: Optional[HiddenState]):
        """Checks, batches and runs one step -> the new states, each [B, H] (or [H] unbatched)."""
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if x.shape[1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} expected {self.input_size}")
        if x.dtype != self.weight_ih.dtype and not torch.is_autocast_enabled(x.device.type):
            raise RuntimeError(f"{name} input dtype ({x.dtype}) does not match weight dtype ({self.weight_ih.dtype})")
        count = 2 if self.mode == "LSTM" else 1
        if hx is None:
            states = [x.new_zeros(x.shape[0], self.hidden_size) for _ in range(count)]
        else:
            states = list(hx) if self.mode == "LSTM" else [hx]
            for index, state in enumerate(states):
                label = f"hx[{index}]" if self.mode == "LSTM" else "hidden"
                if state.dim() not in (1, 2):
                    raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {state.dim()}D instead")
                if state.dim() != input.dim():
                    raise RuntimeError(
                        f"{name}: Expected {label} to be {input.dim()}D like the input, got {state.dim()}D"
                    )
            states = states if batched else [s.unsqueeze(0) for s in states]
            for s in states:
                if tuple(s.shape) != (x.shape[0], self.hidden_size):
                    raise RuntimeError(
                        f"hidden state has inconsistent shape: got {list(s.shape)} expected "
                        f"{[x.shape[0], self.hidden_size]}"
                    )
        w = LayerWeights(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        xw, b_hn = functional.input_projection(self.mode, x.unsqueeze(0), w)
        _, h_n, c_n = functional.recurrence(
            self.mode, xw, w, b_hn, states[0], states[1] if count == 2 else None, None,
            self._resolved_backend(x.device),
        )
        dtype = _torch_nn_output_dtype(self.mode, True, h_n, states[0])
        finals = [h_n.to(dtype)] if c_n is None else [h_n.to(dtype), c_n.to(dtype)]
        return finals if batched else [s.squeeze(0) for s in finals]


class LSTMCell(_RNNCellBase):
    """torch.nn.LSTMCell's interface: forward(input [B, I] or [I], (h, c)) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        h, c = self._step(input, hx)
        return h, c


class GRUCell(_RNNCellBase):
    """torch.nn.GRUCell's interface: forward(input [B, I] or [I], h) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__("GRU", input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._step(input, hx)[0]


class RNNCell(_RNNCellBase):
    """torch.nn.RNNCell's interface: forward(input [B, I] or [I], h) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Invalid nonlinearity selected for RNN. Can be either ``tanh`` or ``relu``, got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._step(input, hx)[0]
