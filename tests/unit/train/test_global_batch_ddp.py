"""One process and two DDP (gloo) processes with the same train.global_batch train the tiny
BrainHarmonix-S to the same weights, with the same learning-rate and weight-decay schedule."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from brainharmony.models.mae3d import MAE3D
from brainharmony.train.config import config_from_mapping
from brainharmony.train.metrics import read_metrics
from tests.unit.train.test_loop import TINY

# Float tolerance of the weight comparison: the two runs sum the same gradients in another
# order (micro-batch accumulation vs. the all-reduce), so they agree to rounding only.
RTOL, ATOL = 1e-5, 1e-6

# The tiny BrainHarmonix-S of test_loop, with the cosine weight decay and a global batch.
CFG = {
    **TINY,
    "name": "tiny_s_gb",
    "optim": {
        "lr": 1.0e-3,
        "min_lr": 1.0e-5,
        "warmup_steps": 2,
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "clip_grad": None,
    },
    # Global batch 4: 1 process x 2 x 2 accumulation steps, or 2 processes x 2 x 1.
    "train": {"steps": 4, "batch_size": 2, "global_batch": 4, "seed": 3, "log_every": 1},
    "data": {"kind": "volumes"},
}


class Volumes:
    """Eight fixed volumes, each with its number (for the sample-seeded masks)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 1, 16, 16, 16, generator=g)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "item": torch.tensor(i)}


class SampleMaskedMAE(MAE3D):
    """The tiny BrainHarmonix-S with each sample's mask drawn from its own seed.

    MAE3D draws masks from the process's random stream, which differs by rank by design,
    so 1 and 2 processes would mask the same sample differently; seeding the mask by the
    item and the optimiser step leaves only the batch split and the gradient sum to compare.
    """

    _step = 0

    def after_step(self, step: int, total_steps: int) -> None:
        self._step = step

    def forward_loss(self, batch):
        self._items = [int(i) for i in batch["item"]]
        return super().forward_loss(batch)

    def random_masking(self, batch_size, device):
        noise = []
        for item in self._items:
            g = torch.Generator().manual_seed(1000 * self._step + item)
            noise.append(torch.rand(self.num_tokens, generator=g))
        order = torch.argsort(torch.stack(noise).to(device), dim=1)
        n_keep = max(1, round(self.num_tokens * (1.0 - self.mask_ratio)))
        return order[:, :n_keep], order[:, n_keep:]


def _run(out: Path) -> None:
    from brainharmony.models.registry import build_model
    from brainharmony.train import train

    torch.set_num_threads(1)
    cfg = config_from_mapping(CFG)
    torch.manual_seed(cfg.train.seed)  # what train() does before building
    model = build_model("bh_s", cfg.model)
    tiny = SampleMaskedMAE(**_kwargs(cfg.model))
    tiny.load_state_dict(model.state_dict())
    train(cfg, Volumes(), out / "model", out / "state", model=tiny, device="cpu", progress=False)


def _kwargs(model_cfg) -> dict:
    doc = dict(model_cfg)
    doc["img_size"] = tuple(doc["img_size"])
    return doc


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    _run(Path(out))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_one_and_two_processes_with_one_global_batch_agree(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    _run(tmp_path / "one")

    one = read_metrics(tmp_path / "one" / "model" / "metrics.jsonl")
    two = read_metrics(tmp_path / "two" / "model" / "metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    assert [r["lr"] for r in one] == [r["lr"] for r in two]  # the same schedule, exactly
    assert [r["wd"] for r in one] == [r["wd"] for r in two]
    assert one[0]["wd"] == pytest.approx(0.04) and one[-1]["wd"] == pytest.approx(0.4)
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"])

    w1 = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    torch.manual_seed(CFG["train"]["seed"])
    from brainharmony.models.registry import build_model

    initial = build_model("bh_s", config_from_mapping(CFG).model).state_dict()
    moved = 0
    for name, tensor in w1.items():
        torch.testing.assert_close(w2[name], tensor, rtol=RTOL, atol=ATOL, msg=name)
        moved += not torch.equal(tensor, initial[name])
    assert moved > len(w1) // 2  # training changed the weights
