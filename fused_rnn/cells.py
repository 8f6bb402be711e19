"""Drop-in replacements for torch.nn.LSTMCell / GRUCell / RNNCell: one time step through the same
recurrence ops as the layers (T = 1). Checks, messages and their order are torch.nn's (see
nn_checks.py); eager, torch.compile and TorchScript run the same code."""

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional, nn_checks, quantization
from .functional import LayerWeights
from .modules import _BackendMixin, torch_nn_output_dtype


class RNNCellBase(_BackendMixin, nn.Module):
    def __init__(self, gates: int, input_size: int, hidden_size: int, bias: bool, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty((gates * hidden_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gates * hidden_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def __setattr__(self, name: str, value) -> None:
        if name == "qconfig":
            quantization.check_qconfig_assignment(self)
        super().__setattr__(name, value)

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

    def _step(self, mode: str, input: Tensor, states: List[Tensor]) -> List[Tensor]:
        """input [B, I] and the states ([B, H] each) as torch.nn hands them to its cell op ->
        the new states: ATen's checks, then one step of the recurrence."""
        nn_checks.check_cell_step(input, states, self.input_size, self.hidden_size)
        if not torch.jit.is_scripting():
            nn_checks.check_cell_dtypes(input, states[0], self.weight_ih.dtype)
        w = LayerWeights(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, None)
        c0 = states[1] if mode == "LSTM" else None
        _, h_n, c_n = functional.run_direction(mode, input.unsqueeze(0), w, states[0], c0, None, False, self._backend)
        dtype = torch_nn_output_dtype(mode, True, h_n, states[0])
        if c_n is None:
            return [h_n.to(dtype)]
        return [h_n.to(dtype), c_n.to(dtype)]

    def _single_state_step(self, mode: str, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        """RNNCell's and GRUCell's forward after torch.nn's rank checks."""
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not batched:
            hx = hx.unsqueeze(0)
        h = self._step(mode, input, [hx])[0]
        return h if batched else h.squeeze(0)


class LSTMCell(RNNCellBase):
    """torch.nn.LSTMCell's interface: forward(input [B, I] or [I], (h, c)) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__(4, input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        nn_checks.check_cell_input_rank("LSTMCell", input)
        if hx is not None:
            for index, value in enumerate(hx):
                nn_checks.check_cell_state_rank("LSTMCell", f"hx[{index}]", value)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = [zeros, zeros]
        elif not batched:
            states = [hx[0].unsqueeze(0), hx[1].unsqueeze(0)]
        elif torch.jit.is_scripting():
            states = [hx[0], hx[1]]
        else:
            states = _lstm_cell_states(hx)
        h, c = self._step("LSTM", input, states)
        if not batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


def _lstm_cell_states(hx) -> List[Tensor]:
    """What torch.nn's lstm_cell op accepts as hx: a tuple or list of exactly two tensors."""
    if not isinstance(hx, (tuple, list)) or not all(isinstance(t, Tensor) for t in hx):
        raise TypeError(f"lstm_cell(): argument 'hx' (position 2) must be tuple of Tensors, not {type(hx).__name__}")
    if len(hx) != 2:
        raise RuntimeError("lstm_cell expects two hidden states")
    return list(hx)


class GRUCell(RNNCellBase):
    """torch.nn.GRUCell's interface: forward(input [B, I] or [I], h) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 *, backend: str = "auto") -> None:
        super().__init__(3, input_size, hidden_size, bias, device, dtype, backend=backend)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        nn_checks.check_cell_input_rank("GRUCell", input)
        if hx is not None:
            nn_checks.check_cell_state_rank("GRUCell", "hidden", hx)
        return self._single_state_step("GRU", input, hx)


class RNNCell(RNNCellBase):
    """torch.nn.RNNCell's interface: forward(input [B, I] or [I], h) -> h'. As torch.nn's, the
    nonlinearity is read when the cell runs: one other than "tanh" or "relu" fails there."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, backend: str = "auto") -> None:
        super().__init__(1, input_size, hidden_size, bias, device, dtype, backend=backend)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        nn_checks.check_cell_input_rank("RNNCell", input)
        if hx is not None:
            nn_checks.check_cell_state_rank("RNNCell", "hidden", hx)
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return self._single_state_step(mode, input, hx)
