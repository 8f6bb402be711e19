"""Drop-in replacements for torch.nn.LSTM / GRU / RNN (the cells are in cells.py).

Constructor arguments, parameter names and shapes, initialisation (same random draws in the same
order), forward signature, outputs and errors (type, message and order of the checks, see
nn_checks.py) are torch.nn's, so state dicts load both ways. The one addition is the keyword-only
`backend` ("auto", "reference", "triton", "native"), also a settable attribute; the ops resolve it
per device when they run, so the same module runs in eager mode, under torch.compile (Dynamo
traces these classes, padded and packed, without a graph break) and as TorchScript
(torch.jit.script and torch.jit.trace; the ops are torch.ops.fused_rnn.*).

These classes do not subclass torch.nn.RNNBase: Dynamo refuses to trace that class and its
subclasses ("Dynamo does not support RNN, GRU, or LSTM"); torch.ao.quantization.quantize_dynamic
learns them from fused_rnn.quantization.
"""

import math
from typing import List, Optional, Tuple, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional, nn_checks, quantization
from .backends import check_backend_name
from .functional import LayerWeights
from .packing import Packing, packed_batch, packed_from_padded, packing_of, padded_from_packed


class _BackendMixin:
    """The `backend` attribute, checked on assignment; the ops resolve it per device."""

    __jit_unused_properties__ = ["backend"]

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = check_backend_name(name)


def torch_nn_output_dtype(mode: str, cell: bool, computed: Tensor, state: Tensor) -> torch.dtype:
    """The dtype torch.nn returns where it differs from the dtype the ops computed in: under CPU
    autocast torch.nn's GRU and its LSTM and GRU cells update the state with pointwise ops that
    promote the autocast-dtype gates with the state's dtype (float32 unless given otherwise), while
    its LSTM (oneDNN) and vanilla RNN stay in the autocast dtype."""
    if not torch.jit.is_scripting():
        promotes = mode == "GRU" or (cell and mode == "LSTM")
        if promotes and computed.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return torch.promote_types(computed.dtype, state.dtype)
    return computed.dtype


class RNNBase(_BackendMixin, nn.Module):
    """Shared machinery of LSTM, GRU and RNN (mirrors torch.nn.RNNBase without subclassing it).

    `_flat_weights` is the list of parameters in `_flat_weights_names` order, kept up to date as
    torch.nn keeps it (TorchScript reads it); eager forward reads the attributes themselves, so
    weights replaced by pruning, parametrizations or torch.func.functional_call are used."""

    __jit_unused_properties__ = ["backend", "all_weights", "num_directions", "state_size"]

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
        nn_checks.check_layer_arguments(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size
        )
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
        self._error_name = "RNN" if mode.startswith("RNN") else mode
        factory = {"device": device, "dtype": dtype}
        gate_size = functional.GATES[mode] * hidden_size
        state_size = proj_size if proj_size > 0 else hidden_size
        directions = 2 if bidirectional else 1
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
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
        self._init_flat_weights()
        self.reset_parameters()

    def _init_flat_weights(self) -> None:
        self._flat_weights = [getattr(self, name, None) for name in self._flat_weights_names]

    def __setattr__(self, name: str, value) -> None:
        if name == "qconfig":
            quantization.check_qconfig_assignment(self)
        names = self.__dict__.get("_flat_weights_names")
        if names is not None and name in names and "_flat_weights" in self.__dict__:
            self._flat_weights[names.index(name)] = value
        super().__setattr__(name, value)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._init_flat_weights()
        return result

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """The size of the hidden state h (proj_size for a projected LSTM)."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
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

    # -- the weights -------------------------------------------------------------------------

    def _weights(self) -> List[Tensor]:
        if torch.jit.is_scripting():
            return self._flat_weights
        else:
            return [getattr(self, name) for name in self._flat_weights_names]

    def _layer_weights(self, weights: List[Tensor]) -> List[List[LayerWeights]]:
        """The flat weights grouped by layer and direction."""
        per_direction = 2 + (2 if self.bias else 0) + (1 if self.proj_size > 0 else 0)
        directions = 2 if self.bidirectional else 1
        layers: List[List[LayerWeights]] = []
        for layer in range(self.num_layers):
            group: List[LayerWeights] = []
            for direction in range(directions):
                first = (layer * directions + direction) * per_direction
                b_ih: Optional[Tensor] = None
                b_hh: Optional[Tensor] = None
                w_hr: Optional[Tensor] = None
                if self.bias:
                    b_ih, b_hh = weights[first + 2], weights[first + 3]
                if self.proj_size > 0:
                    w_hr = weights[first + per_direction - 1]
                group.append(LayerWeights(weights[first], weights[first + 1], b_ih, b_hh, w_hr))
            layers.append(group)
        return layers

    # -- forward -----------------------------------------------------------------------------

    def _expected_state_sizes(self, batch: int) -> List[List[int]]:
        slots = self.num_layers * (2 if self.bidirectional else 1)
        sizes = [[slots, batch, self.proj_size if self.proj_size > 0 else self.hidden_size]]
        if self.mode == "LSTM":
            sizes.append([slots, batch, self.hidden_size])
        return sizes

    def _zero_states(self, x: Tensor, batch: int) -> List[Tensor]:
        return [x.new_zeros(sizes) for sizes in self._expected_state_sizes(batch)]

    def _run(
        self, x: Tensor, states: List[Tensor], weights: List[Tensor], packing: Optional[Packing]
    ) -> Tuple[Tensor, List[Tensor]]:
        """After the shape checks: the remaining checks in torch.nn's order (ATen's), then every
        layer over x [T, B, I] -> output [T, B, D*P] (packed rows x [N, I] -> [N, D*P], see
        functional.runs_packed) and the final states."""
        if not torch.jit.is_scripting():
            nn_checks.check_state_count(self.mode, len(states))
        nn_checks.check_devices(x, states, weights)
        if x.size(0) == 0:
            raise RuntimeError(nn_checks.SEQUENCE_LENGTH_MESSAGE)
        if not torch.jit.is_scripting():
            nn_checks.check_state_dtypes(states, weights[0].dtype)
        c0 = states[1] if self.mode == "LSTM" else None
        output, h_n, c_n = functional.run_layers(
            self.mode, x, self._layer_weights(weights), states[0], c0, packing,
            self.dropout, self.training, self._backend,
        )
        finals = [h_n] if c_n is None else [h_n, c_n]
        dtype = torch_nn_output_dtype(self.mode, False, output, states[0])
        return output.to(dtype), [s.to(dtype) for s in finals]

    def _forward_padded(self, input: Tensor, hx: Optional[List[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
        """input [T, B, I] ([B, T, I] batch_first) or unbatched [T, I]; hx as torch.nn takes it,
        as a list -> output as torch.nn returns it, final states [L*D, B, P] ([L*D, P] unbatched)."""
        nn_checks.check_input_rank(self._error_name, input)
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
        x = input.transpose(0, 1) if self.batch_first else input
        weights = self._weights()
        if hx is None:
            states = self._zero_states(x, x.size(1))
        else:
            nn_checks.check_state_ranks(self.mode, hx, batched)
            if batched:
                states = hx
            else:  # as torch.nn, only the states the cell has (so a third is dropped)
                states = [hx[index].unsqueeze(1) for index in range(2 if self.mode == "LSTM" else 1)]
        nn_checks.check_input(x, weights[0].dtype, self.input_size, False, False)
        nn_checks.check_state_sizes(self.mode, states, self._expected_state_sizes(x.size(1)))
        output, finals = self._run(x, states, weights, None)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(batch_dim)
            finals = [s.squeeze(1) for s in finals]
        return output, finals

    def _forward_packed(
        self, input: PackedSequence, hx: Optional[List[Tensor]]
    ) -> Tuple[Tensor, List[Tensor]]:
        """PackedSequence input -> the output's packed data [N, D*P] and the final states, in the
        caller's batch order (sorted_indices / unsorted_indices applied)."""
        data, batch_sizes = input.data, input.batch_sizes
        weights = self._weights()
        nn_checks.check_input(data, weights[0].dtype, self.input_size, True, self.mode == "LSTM")
        if not torch.jit.is_scripting():
            if not torch.compiler.is_compiling() and not torch.jit.is_tracing():
                nn_checks.check_batch_sizes(data, batch_sizes)
        batch = packed_batch(input, hx)
        if hx is None:
            states = self._zero_states(data, batch)
        else:
            nn_checks.check_state_sizes(self.mode, hx, self._expected_state_sizes(batch))
            states = hx
            sorted_indices = input.sorted_indices
            if sorted_indices is not None:
                states = [s.index_select(1, sorted_indices) for s in states]
        packing = packing_of(data, batch_sizes, batch)
        if functional.runs_packed(data, self._backend):
            output, finals = self._run(data, states, weights, packing)
        else:
            x = padded_from_packed(data, packing, batch_sizes.size(0))
            padded, finals = self._run(x, states, weights, packing)
            output = packed_from_padded(padded, packing)
        unsorted_indices = input.unsorted_indices
        if unsorted_indices is not None:
            finals = [s.index_select(1, unsorted_indices) for s in finals]
        return output, finals


def _like(packed: PackedSequence, data: Tensor) -> PackedSequence:
    """A PackedSequence with the packing of `packed` and other data."""
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


class LSTM(RNNBase):
    """torch.nn.LSTM's interface over the fused recurrence ops (see torch.nn.LSTM for arguments)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend)

    @overload
    @torch._jit_internal._overload_method
    def forward(
        self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(
        self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        pass

    def forward(self, input, hx=None):
        states: Optional[List[Tensor]] = None
        if hx is not None:
            if torch.jit.is_scripting():
                states = [hx[0], hx[1]]
            else:
                states = hx  # indexed as torch.nn indexes it, so a wrong count fails as there
        if isinstance(input, PackedSequence):
            data, finals = self._forward_packed(input, states)
            return _like(input, data), (finals[0], finals[1])
        output, finals = self._forward_padded(input, states)
        return output, (finals[0], finals[1])


class GRU(RNNBase):
    """torch.nn.GRU's interface over the fused recurrence ops: GRU(input_size, hidden_size,
    num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None,
    dtype=None, *, backend="auto"). As torch.nn's, a proj_size keyword is refused."""

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):
        states: Optional[List[Tensor]] = None if hx is None else [hx]
        if isinstance(input, PackedSequence):
            data, finals = self._forward_packed(input, states)
            return _like(input, data), finals[0]
        output, finals = self._forward_padded(input, states)
        return output, finals[0]


class RNN(RNNBase):
    """torch.nn.RNN's interface over the fused recurrence ops: RNN(input_size, hidden_size,
    num_layers=1, nonlinearity="tanh", bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, backend="auto"). As torch.nn's, a proj_size
    keyword is refused."""

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):
        states: Optional[List[Tensor]] = None if hx is None else [hx]
        if isinstance(input, PackedSequence):
            data, finals = self._forward_packed(input, states)
            return _like(input, data), finals[0]
        output, finals = self._forward_padded(input, states)
        return output, finals[0]
