"""Encoder-decoder with attention: a bidirectional LSTM encoder and an LSTMCell decoder.

Built either from fused_rnn modules (LSTM, LSTMCell, AdditiveAttention, LuongAttention) or from
torch.nn.LSTM / torch.nn.LSTMCell and the plain-PyTorch attention of torch_attention.py, with the
same parameter names, so the two builds train the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torch_attention import TorchAdditiveAttention, TorchLuongAttention

ATTENTIONS = ("additive", "luong", "none")
MODULES = ("fused", "torch")


@dataclass
class Sizes:
    embed: int = 32
    encoder_hidden: int = 64
    decoder_hidden: int = 128
    attention: int = 64


def _recurrent_layers(modules: str, backend: str, sizes: Sizes, decoder_input: int):
    """(encoder, decoder cell) from fused_rnn or torch.nn."""
    if modules == "fused":
        import fused_rnn

        return (fused_rnn.LSTM(sizes.embed, sizes.encoder_hidden, batch_first=True, bidirectional=True,
                               backend=backend),
                fused_rnn.LSTMCell(decoder_input, sizes.decoder_hidden, backend=backend))
    return (nn.LSTM(sizes.embed, sizes.encoder_hidden, batch_first=True, bidirectional=True),
            nn.LSTMCell(decoder_input, sizes.decoder_hidden))


def _attention_layer(kind: str, modules: str, backend: str, sizes: Sizes) -> Optional[nn.Module]:
    query, key = sizes.decoder_hidden, 2 * sizes.encoder_hidden
    if kind == "none":
        return None
    if modules == "fused":
        import fused_rnn

        if kind == "additive":
            return fused_rnn.AdditiveAttention(query, key, sizes.attention, backend=backend)
        return fused_rnn.LuongAttention(query, key, score="general", backend=backend)
    if kind == "additive":
        return TorchAdditiveAttention(query, key, sizes.attention)
    return TorchLuongAttention(query, key, score="general")


class Seq2Seq(nn.Module):
    """Source ids [B, S] -> target logits [B, T, V].

    Each decoder step attends from the previous decoder state h[t-1] over the encoder outputs,
    feeds [embedding of y[t-1]; context] to the LSTMCell, and predicts y[t] from [h[t]; context].
    With attention "none" the context is absent: the decoder knows the source only through its
    initial state, a projection of the encoder's final states.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, bos_id: int, *, attention: str = "additive",
                 modules: str = "fused", backend: str = "auto", sizes: Sizes = Sizes()) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if modules not in MODULES:
            raise ValueError(f"modules must be one of {MODULES}, got {modules!r}")
        self.bos_id = bos_id
        self.decoder_hidden = sizes.decoder_hidden
        context = 0 if attention == "none" else 2 * sizes.encoder_hidden
        self.src_embed = nn.Embedding(src_vocab_size, sizes.embed, padding_idx=0)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, sizes.embed)
        self.encoder, self.decoder = _recurrent_layers(modules, backend, sizes, sizes.embed + context)
        self.bridge = nn.Linear(2 * sizes.encoder_hidden, 2 * sizes.decoder_hidden)
        self.attention = _attention_layer(attention, modules, backend, sizes)
        self.out = nn.Linear(sizes.decoder_hidden + context, tgt_vocab_size)

    def encode(self, src: Tensor, src_lengths: Tensor):
        """src [B, S], src_lengths [B] (CPU) -> keys [B, S, 2He], initial decoder (h, c) [B, Hd]."""
        packed = pack_padded_sequence(self.src_embed(src), src_lengths, batch_first=True, enforce_sorted=False)
        output, (h_n, _) = self.encoder(packed)
        keys, _ = pad_packed_sequence(output, batch_first=True, total_length=src.shape[1])
        h, c = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], dim=-1))).chunk(2, dim=-1)
        return keys, (h.contiguous(), c.contiguous())

    def step(self, prev: Tensor, state, keys: Tensor, key_lengths: Tensor, need_weights: bool = False):
        """One decoder step: prev [B] ids -> logits [B, V], new state, weights [B, S] or None."""
        h, c = state
        inputs, weights = [self.tgt_embed(prev)], None
        if self.attention is not None:
            context, weights = self.attention(h, keys, key_lengths=key_lengths, need_weights=need_weights)
            inputs.append(context)
        h, c = self.decoder(torch.cat(inputs, dim=-1), (h, c))
        features = torch.cat([h] + inputs[1:], dim=-1)
        return self.out(features), (h, c), weights

    def forward(self, src: Tensor, src_lengths: Tensor, tgt: Tensor) -> Tensor:
        """Teacher forcing: tgt [B, T] ids -> logits [B, T, V] for predicting tgt."""
        keys, state = self.encode(src, src_lengths)
        key_lengths = src_lengths.to(src.device)
        prev = torch.full_like(tgt[:, 0], self.bos_id)
        logits = []
        for t in range(tgt.shape[1]):
            step_logits, state, _ = self.step(prev, state, keys, key_lengths)
            logits.append(step_logits)
            prev = tgt[:, t]
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy(self, src: Tensor, src_lengths: Tensor, steps: int):
        """Greedy decoding -> ids [B, steps], attention weights [B, steps, S] (None without attention)."""
        keys, state = self.encode(src, src_lengths)
        key_lengths = src_lengths.to(src.device)
        prev = torch.full((src.shape[0],), self.bos_id, dtype=torch.int64, device=src.device)
        ids, weights = [], []
        for _ in range(steps):
            step_logits, state, step_weights = self.step(prev, state, keys, key_lengths, need_weights=True)
            prev = step_logits.argmax(dim=-1)
            ids.append(prev)
            weights.append(step_weights)
        attention = None if self.attention is None else torch.stack(weights, dim=1)
        return torch.stack(ids, dim=1), attention
