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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from brainharmony.train.config import OptimConfig

__all__ = [
    "WarmupCosine",
    "build_optimizer",
    "build_scheduler",
    "decay_exempt_names",
    "lr_at",
    "param_groups",
    "resolve_precision",
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
