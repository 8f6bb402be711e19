"""torch.ao.quantization.quantize_dynamic on models with fused_rnn modules: named in qconfig_spec
they are quantized exactly as torch.nn's are (the same quantized modules, the same outputs); left
out while torch.nn's class is named (the default qconfig_spec), quantize_dynamic refuses."""

import warnings

import pytest
import torch
from torch import nn

import fused_rnn

quantize_dynamic = torch.ao.quantization.quantize_dynamic
quantized = torch.ao.nn.quantized.dynamic


@pytest.fixture(autouse=True)
def quiet_deprecation():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        yield


class Model(nn.Module):
    """An encoder of each quantizable kind, a vanilla RNN and a linear head, from one library."""

    def __init__(self, library) -> None:
        super().__init__()
        self.lstm = library.LSTM(6, 12, num_layers=2, bidirectional=True)
        self.gru = library.GRU(24, 10, batch_first=False)
        self.rnn = library.RNN(10, 8)
        self.lstm_cell = library.LSTMCell(8, 8)
        self.gru_cell = library.GRUCell(8, 8)
        self.rnn_cell = library.RNNCell(8, 8, nonlinearity="relu")
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        out, _ = self.gru(out)
        out, _ = self.rnn(out)
        h, c = self.lstm_cell(out[-1])
        h = self.gru_cell(h + c)
        return self.head(self.rnn_cell(h))


FUSED = {fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.LSTMCell, fused_rnn.GRUCell, fused_rnn.RNNCell}
TORCH = {nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell}


def twin_models():
    torch.manual_seed(0)
    ours = Model(fused_rnn)
    theirs = Model(nn)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
def test_named_fused_modules_are_quantized_as_torch_nn_modules(dtype):
    ours, theirs = twin_models()
    x = torch.randn(9, 4, 6, generator=torch.Generator().manual_seed(1))
    q_ours = quantize_dynamic(ours, FUSED | {nn.Linear}, dtype=dtype)
    q_theirs = quantize_dynamic(theirs, TORCH | {nn.Linear}, dtype=dtype)
    for name in ("lstm", "gru", "lstm_cell", "gru_cell", "rnn_cell"):
        assert type(getattr(q_ours, name)) is type(getattr(q_theirs, name)), name
        assert type(getattr(q_ours, name)).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(q_ours.rnn) is fused_rnn.RNN  # no quantized vanilla RNN in torch either
    assert type(q_ours.lstm) is quantized.LSTM and type(ours.lstm) is fused_rnn.LSTM  # not in place
    with torch.no_grad():
        got, want, float_out = q_ours(x), q_theirs(x), ours(x)
    # the same quantized modules; only the float vanilla RNN between them is fused_rnn's
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    if dtype == torch.qint8:  # int8 weights: an error of the quantization's size, not zero
        assert 1e-5 < (got - float_out).abs().max() < 0.05


def test_default_qconfig_spec_refuses_to_leave_a_fused_lstm_unquantized():
    ours, _ = twin_models()
    with pytest.raises(TypeError, match=r"qconfig_spec names torch.nn.LSTM, which fused_rnn.LSTM is not .* name "
                                        r"fused_rnn.LSTM in qconfig_spec too"):
        quantize_dynamic(ours)
    with pytest.raises(TypeError, match=r"torch.nn.GRUCell, which fused_rnn.GRUCell is not"):
        quantize_dynamic(nn.Sequential(fused_rnn.GRUCell(3, 4)), {nn.GRUCell})


def test_modules_not_asked_for_stay_as_they_are():
    ours, _ = twin_models()
    q = quantize_dynamic(ours, {nn.Linear})
    assert type(q.head) is quantized.Linear
    assert all(type(getattr(q, n)) is type(getattr(ours, n)) for n in ("lstm", "gru", "rnn", "lstm_cell"))


def test_a_custom_mapping_without_fused_rnn_is_refused():
    ours, _ = twin_models()
    mapping = {nn.Linear: quantized.Linear}
    with pytest.raises(TypeError, match=r"names fused_rnn.LSTM but the mapping passed has no entry for it"):
        quantize_dynamic(ours, {fused_rnn.LSTM}, mapping=mapping)


def test_torch_nn_twin_holds_the_same_module():
    module = fused_rnn.LSTM(3, 5, num_layers=2, proj_size=2, batch_first=True).double().eval()
    twin = fused_rnn.quantization.torch_nn_twin(module)
    assert type(twin) is nn.LSTM and not twin.training and twin.proj_size == 2 and twin.batch_first
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    assert torch.allclose(twin(x)[0], module(x)[0], rtol=1e-10, atol=1e-12)
