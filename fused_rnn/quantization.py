"""fused_rnn's modules under torch.ao.quantization.quantize_dynamic.

quantize_dynamic picks the modules to quantize by their exact class (its qconfig_spec) and swaps
them through a class -> quantized-class mapping. For fused_rnn's modules:

- Named in qconfig_spec (the class, or the module's name), fused_rnn.LSTM, GRU, LSTMCell, GRUCell
  and RNNCell are quantized as torch.nn's are: swapped for torch's dynamically quantized LSTM, GRU
  or cell (torch.ao.nn.quantized.dynamic), built from a torch.nn copy of the module with the same
  weights, so the weights are int8 (or float16) and the results those of torch.nn's module
  quantized the same way. (The quantized module runs torch's kernels, not fused_rnn's.) `register`
  adds them to torch's default dynamic-quantization mapping; fused_rnn calls it when imported.
- Not named while qconfig_spec names the torch.nn class (the default qconfig_spec names nn.LSTM,
  nn.GRU and the three cells), they would silently stay in floating point: quantize_dynamic then
  raises a TypeError that says which class to add. (It is raised while the qconfig is assigned to
  the module, which recognises a quantize_dynamic call among its callers.)
- fused_rnn.RNN, like torch.nn.RNN, has no dynamically quantized counterpart and stays in floating
  point.
"""

from __future__ import annotations

import inspect
import sys
from typing import Optional

from torch import nn

_TORCH_NN_NAMES = {"LSTM": "LSTM", "GRU": "GRU", "LSTMCell": "LSTMCell", "GRUCell": "GRUCell", "RNNCell": "RNNCell"}


def _quantized_class(name: str):
    import torch.ao.nn.quantized.dynamic as quantized

    return getattr(quantized, name)


def torch_nn_twin(module: nn.Module) -> nn.Module:
    """The torch.nn module with the configuration, weights, device and dtype of a fused_rnn one."""
    name = type(module).__name__
    if name in ("LSTM", "GRU"):
        kwargs = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                      dropout=module.dropout, bidirectional=module.bidirectional)
        if name == "LSTM":
            kwargs["proj_size"] = module.proj_size
    else:
        kwargs = dict(bias=module.bias)
        if name == "RNNCell":
            kwargs["nonlinearity"] = module.nonlinearity
    weight = module.weight_ih_l0 if name in ("LSTM", "GRU") else module.weight_ih
    twin = getattr(nn, _TORCH_NN_NAMES[name])(module.input_size, module.hidden_size, **kwargs,
                                              device=weight.device, dtype=weight.dtype)
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin


class _DynamicallyQuantized:
    """The mapping's entry for one fused_rnn class: from_float quantizes its torch.nn twin."""

    def __init__(self, name: str) -> None:
        self.name = name

    def from_float(self, module: nn.Module, use_precomputed_fake_quant: bool = False) -> nn.Module:
        twin = torch_nn_twin(module)
        twin.qconfig = module.qconfig
        return _quantized_class(self.name).from_float(twin, use_precomputed_fake_quant=use_precomputed_fake_quant)


def _fused_classes() -> dict:
    import fused_rnn

    return {getattr(fused_rnn, name): getattr(nn, name) for name in _TORCH_NN_NAMES}


def register() -> None:
    """Add fused_rnn's quantizable classes to torch's default dynamic-quantization mapping."""
    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    mapping = get_default_dynamic_quant_module_mappings()
    for fused_class in _fused_classes():
        mapping.setdefault(fused_class, _DynamicallyQuantized(fused_class.__name__))


def _quantize_dynamic_locals() -> Optional[dict]:
    """The local variables of the quantize_dynamic call this code runs under, if any."""
    quantize = sys.modules.get("torch.ao.quantization.quantize")
    if quantize is None:
        return None
    code = inspect.unwrap(quantize.quantize_dynamic).__code__  # under torch's deprecation wrapper
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals
        frame = frame.f_back
    return None


def check_qconfig_assignment(module: nn.Module) -> None:
    """Called when a qconfig is assigned to a fused_rnn module: under quantize_dynamic, refuse to
    leave the module in floating point where its torch.nn counterpart would be quantized."""
    counterpart = _fused_classes().get(type(module))
    if counterpart is None:
        return
    call = _quantize_dynamic_locals()
    if call is None or not isinstance(call.get("qconfig_spec"), dict):
        return
    spec, mapping = call["qconfig_spec"], call.get("mapping")
    name = type(module).__name__
    if type(module) in spec:
        if mapping is not None and type(module) not in mapping:
            raise TypeError(
                f"quantize_dynamic: qconfig_spec names fused_rnn.{name} but the mapping passed has no "
                f"entry for it; add fused_rnn.quantization's: mapping[fused_rnn.{name}] = "
                f"torch.ao.quantization.get_default_dynamic_quant_module_mappings()[fused_rnn.{name}]"
            )
    elif counterpart in spec:
        raise TypeError(
            f"quantize_dynamic: qconfig_spec names torch.nn.{name}, which fused_rnn.{name} is not (modules "
            f"are picked by exact class), so the fused_rnn.{name} in the model would stay in floating point; "
            f"name fused_rnn.{name} in qconfig_spec too, e.g. quantize_dynamic(model, {{torch.nn.Linear, "
            f"torch.nn.{name}, fused_rnn.{name}}}, dtype=torch.qint8), to swap it for torch's dynamically "
            f"quantized {name}"
        )


__all__ = ["check_qconfig_assignment", "register", "torch_nn_twin"]
