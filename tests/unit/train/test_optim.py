"""Learning-rate schedule, weight-decay groups, precision choice."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from brainharmony.train.config import OptimConfig
from brainharmony.train.optim import (
    build_optimizer,
    build_scheduler,
    decay_exempt_names,
    lr_at,
    param_groups,
    resolve_precision,
)


def test_warmup_then_cosine_values() -> None:
    cfg = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    total = 14
    assert [lr_at(s, cfg, total) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_at(4, cfg, total) == pytest.approx(1.0)  # cosine starts at the peak
    # The cosine runs over steps 4..13: step 8 is 4/9 of the way.
    mid = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (8 - 4) / 9))
    assert lr_at(8, cfg, total) == pytest.approx(mid)
    assert lr_at(13, cfg, total) == pytest.approx(0.1)  # last step reaches min_lr
    values = [lr_at(s, cfg, total) for s in range(4, total)]
    assert all(a >= b for a, b in itertools.pairwise(values))  # monotone decay
    no_warmup = OptimConfig(lr=2.0, min_lr=0.0, warmup_steps=0)
    assert lr_at(0, no_warmup, 5) == pytest.approx(2.0)
    assert lr_at(4, no_warmup, 5) == pytest.approx(0.0)
    # Warmup longer than the run: pure warmup, never above lr.
    assert lr_at(2, OptimConfig(lr=1.0, warmup_steps=10), 3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, cfg, total)


def test_scheduler_applies_the_schedule_per_step() -> None:
    cfg = OptimConfig(lr=0.5, min_lr=0.05, warmup_steps=3)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, 10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, cfg, 10) for s in range(10)])


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
        self.gate = nn.Parameter(torch.ones(3, 3))  # 2-D, excluded only by no_weight_decay()
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)

    def no_weight_decay(self) -> set[str]:
        return {"gate", "head.1"}


def test_weight_decay_groups() -> None:
    model = _Toy()
    exempt = decay_exempt_names(model)
    assert exempt == {
        "embed.weight",
        "cls_token",
        "pos_embed",
        "proj.bias",
        "norm.weight",
        "norm.bias",
        "head.0.bias",
        "head.1.weight",
        "head.1.bias",
        "gate",
    }
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert groups[0]["names"] == ["proj.weight", "head.0.weight"]
    assert "frozen" not in groups[0]["names"] + groups[1]["names"]
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05))
    assert [len(g["params"]) for g in opt.param_groups] == [2, 10]


def test_decay_actually_skips_exempt_parameters() -> None:
    model = _Toy()
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5))
    before_gate = model.gate.detach().clone()
    before_proj = model.proj.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()  # zero gradients: only decoupled weight decay moves parameters
    assert torch.equal(model.gate, before_gate)
    torch.testing.assert_close(model.proj.weight, before_proj * (1 - 0.1 * 0.5))


def test_precision_resolution_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None
    assert resolve_precision("fp32", cpu) is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_precision("bf16", cpu)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp8", cpu)
