"""fused_rnn: fused RNN, LSTM and GRU kernels for PyTorch, as custom ops and drop-in torch.nn modules."""

from . import ops, quantization, reference
from .attention import AdditiveAttention, LuongAttention
from .backends import available_backends
from .cells import GRUCell, LSTMCell, RNNCell
from .modules import GRU, LSTM, RNN

quantization.register()

__version__ = "0.1.0"

__all__ = [
    "AdditiveAttention",
    "LuongAttention",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "available_backends",
    "ops",
    "reference",
]
