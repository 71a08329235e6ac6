"""AdamW with weight-decay exclusions, warmup + cosine schedule, precision choice.

Weight decay is not applied to
* every parameter with fewer than 2 dimensions (biases, LayerNorm/BatchNorm scales),
* every parameter of a normalisation or embedding module (``nn.LayerNorm``,
  ``nn.GroupNorm``, ``nn.BatchNorm*``, ``nn.Embedding``),
* parameters whose name contains ``token`` (CLS/mask/hub tokens) or ``pos_embed``,
* the names returned by ``model.no_weight_decay()`` (exact names, or module prefixes).

The learning rate at optimiser step ``s`` (0-based) of ``S`` with ``W`` warmup steps is
``lr * (s + 1) / W`` for ``s < W``, then a cosine from ``lr`` (at ``s = W``) to ``min_lr``
(at ``s = S - 1``).

The weight decay of the decayed group is ``weight_decay`` throughout, or, with
``weight_decay_end`` set, ``wd_end + (wd - wd_end) * (1 + cos(pi * s / (S - 1))) / 2``: a
cosine from ``weight_decay`` at the first step to ``weight_decay_end`` at the last (no
warmup), the MAE/I-JEPA family's ``cosine_scheduler``/``CosineWDSchedule``.

Both are functions of the optimiser step alone. With ``train.global_batch`` set, the
number of optimiser steps and the samples each one sees do not depend on the number of
processes either (:func:`plan_schedule`), so the schedules are the same on 1 or 8 GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from brainharmony.io import PathLike
from brainharmony.train.config import ModelConfig, OptimConfig, resolve_grad_accum

__all__ = [
    "Schedule",
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "decay_exempt_names",
    "lr_at",
    "param_groups",
    "plan_schedule",
    "resolve_precision",
    "set_weight_decay",
    "wd_at",
]

_NO_DECAY_MODULES = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.Embedding,
)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in patterns)


def decay_exempt_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters that get no weight decay (rules in module doc)."""
    extra = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{pname}" if module_name else pname
            if (
                param.ndim < 2
                or isinstance(module, _NO_DECAY_MODULES)
                or "token" in pname
                or "pos_embed" in full
                or _matches(full, extra)
            ):
                exempt.add(full)
    return exempt


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: decayed and exempt, with their names (``names`` key).

    Shared parameters are listed once (under their first name); frozen ones are left out.
    """
    exempt = decay_exempt_names(model)
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():  # de-duplicates shared parameters
        if not param.requires_grad:
            continue
        (no_decay if name in exempt else decay).append((name, param))
    groups = [
        {
            "params": [p for _, p in decay],
            "names": [n for n, _ in decay],
            "weight_decay": weight_decay,
        },
        {
            "params": [p for _, p in no_decay],
            "names": [n for n, _ in no_decay],
            "weight_decay": 0.0,
        },
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of the (unwrapped) model."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True if fused else None
    )


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) in a run of ``total_steps``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    span = total_steps - 1 - warmup
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wd_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Weight decay of the decayed group at optimiser step ``step`` (0-based)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    span = total_steps - 1
    progress = 1.0 if span <= 0 else min(1.0, step / span)
    end = cfg.weight_decay_end
    return end + (cfg.weight_decay - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_weight_decay(
    optimizer: torch.optim.Optimizer, exempt: set[str], cfg: OptimConfig, step: int, total: int
) -> float | None:
    """Set the decayed group's weight decay for ``step`` (with ``weight_decay_end`` only).

    The decayed group is the one whose parameter names (``names``, kept in the optimiser
    state) are not in ``exempt`` (:func:`decay_exempt_names`); the exempt group stays at
    0. Returns the value set, or ``None`` for the constant schedule (nothing is touched,
    so those runs are unchanged).
    """
    if cfg.weight_decay_end is None:
        return None
    value = wd_at(step, cfg, total)
    for group in optimizer.param_groups:
        if not set(group.get("names", ())) & exempt:
            group["weight_decay"] = value
    return value


@dataclass(frozen=True)
class Schedule:
    """What a run does per optimiser step, for a given number of processes.

    Attributes
    ----------
    world_size : int
    grad_accum : int
        Micro-batches per optimiser step on each process.
    global_batch : int
        Samples per optimiser step over all processes.
    steps : int
        Optimiser steps.
    lr, weight_decay : tuple of float
        Per optimiser step.
    """

    world_size: int
    grad_accum: int
    global_batch: int
    steps: int
    lr: tuple[float, ...]
    weight_decay: tuple[float, ...]

    @property
    def samples(self) -> int:
        """Samples seen over the run."""
        return self.global_batch * self.steps


def plan_schedule(
    cfg: ModelConfig, world_size: int, source: PathLike | str | None = None
) -> Schedule:
    """The accumulation, global batch and per-step schedules of ``cfg`` on
    ``world_size`` processes (what :func:`brainharmony.train.train` runs).

    Raises
    ------
    ModelConfigError
        ``train.global_batch`` does not divide into ``batch_size * world_size``.
    """
    tc = cfg.train
    accum = resolve_grad_accum(tc, world_size, source or cfg.name)
    total = tc.steps
    return Schedule(
        world_size=world_size,
        grad_accum=accum,
        global_batch=tc.batch_size * world_size * accum,
        steps=total,
        lr=tuple(lr_at(s, cfg.optim, total) for s in range(total)),
        weight_decay=tuple(wd_at(s, cfg.optim, total) for s in range(total)),
    )


class WarmupCosine:
    """Multiplicative factor for :class:`torch.optim.lr_scheduler.LambdaLR` (picklable)."""

    def __init__(self, cfg: OptimConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        return lr_at(step, self.cfg, self.total_steps) / self.cfg.lr


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warmup + cosine; call ``scheduler.step()`` after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg, total_steps))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``torch.bfloat16``) or ``None`` for plain fp32.

    Raises
    ------
    ValueError
        ``bf16`` on a device that is not CUDA (autocast in bf16 is used on CUDA only), or
        an unknown precision.
    """
    if precision == "fp32":
        return None
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if precision == "bf16":
        if not cuda_bf16:
            raise ValueError(
                f"precision 'bf16' needs a CUDA device with bf16 support; this run is on "
                f"{device}. Use precision 'auto' or 'fp32'."
            )
        return torch.bfloat16
    raise ValueError(f"precision must be auto, fp32 or bf16; got {precision!r}")
