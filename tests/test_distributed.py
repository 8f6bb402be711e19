"""DistributedDataParallel over two processes (gloo): the averaged gradients of the two halves of a
batch equal the gradients of one process on the whole batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fused_rnn
from fused_rnn.parity import relative_error

WORLD_SIZE = 2
BATCH = 6  # each process takes BATCH // WORLD_SIZE rows


class Tagger(nn.Module):
    """A 2-layer bidirectional LSTM with a projection, then a GRU and a linear read-out per step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = fused_rnn.LSTM(3, 7, num_layers=2, bidirectional=True, proj_size=4, batch_first=True)
        self.gru = fused_rnn.GRU(8, 5, batch_first=True)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(x)
        hidden, _ = self.gru(hidden)
        return self.out(hidden)


def make_model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Tagger().double()
    x = torch.randn(BATCH, 9, 3, dtype=torch.float64)
    target = torch.randn(BATCH, 9, 2, dtype=torch.float64)
    return model, x, target


def loss_of(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (model(x) - target).pow(2).mean()  # a mean over rows: DDP's gradient average matches it


def worker(rank: int, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        model, x, target = make_model_and_data()
        ddp = DistributedDataParallel(model)
        rows = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
        loss_of(ddp, x[rows], target[rows]).backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        torch.save(grads, os.path.join(result_dir, f"grads{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    model, x, target = make_model_and_data()
    loss_of(model, x, target).backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    assert len(expected) == 2 * 2 * 5 + 4 + 2
    for rank in range(WORLD_SIZE):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        assert grads.keys() == expected.keys()
        for name, want in expected.items():
            assert relative_error(grads[name], want) <= 1e-10, f"rank {rank}: {name}"
