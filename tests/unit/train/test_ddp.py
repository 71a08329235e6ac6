"""DDP with two gloo processes gives the same update as one process on the joint batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from brainharmony.train.config import config_from_mapping

CFG = {
    "name": "ddp_toy",
    "kind": "bh_s",  # the registry kind is unused: the model is passed in
    "optim": {"lr": 0.05, "min_lr": 0.0, "warmup_steps": 1, "weight_decay": 0.1},
    "train": {"steps": 3, "batch_size": 4, "seed": 5, "log_every": 1, "ckpt_every": 3},
    "data": {"kind": "volumes"},
}


class ToyData:
    """Eight fixed (x, y) pairs of a noisy linear relation."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 6, generator=g)
        self.y = self.x @ torch.arange(6.0) + 0.1 * torch.randn(8, generator=g)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class ToyModel(nn.Module):
    """Deterministic regression (no random state), so only the data split can differ."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 1)

    def forward_loss(self, batch: dict[str, torch.Tensor]):
        pred = self.head(torch.tanh(self.norm(self.hidden(batch["x"])))).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).mean()
        return loss, {"pred_mean": float(pred.mean().detach())}


def _run(out: Path, cfg_doc: dict) -> ToyModel:
    from brainharmony.train import train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ToyModel()
    cfg = config_from_mapping(cfg_doc)
    train(cfg, ToyData(), out / "model", out / "state", model=model, device="cpu", progress=False)
    return model


def _worker(rank: int, world: int, port: int, out: str, cfg_doc: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    model = _run(Path(out), cfg_doc)
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ddp_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    # Two ranks x micro-batches of 1 x 2 accumulation steps = the same global batch of 4.
    ddp_doc = {**CFG, "train": {**CFG["train"], "batch_size": 1, "grad_accum": 2}}
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), ddp_doc), nprocs=2, join=True)
    single = _run(tmp_path / "one", CFG)

    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    saved = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    assert not (tmp_path / "ddp" / "model" / "rank1.pt").exists()
    torch.manual_seed(0)
    initial = ToyModel()
    for name, tensor in single.state_dict().items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # ranks stay in sync
        torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saved[name], tensor, rtol=1e-5, atol=1e-6)
        assert not torch.equal(tensor, initial.state_dict()[name])  # training moved it
