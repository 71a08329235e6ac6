"""Converters from released (official) checkpoints to this package's models."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ImportedModel"]


@dataclass
class ImportedModel:
    """A converted checkpoint: the model kind, its ``build`` mapping, weights and notes."""

    kind: str
    model_cfg: dict
    state_dict: dict[str, torch.Tensor]
    notes: list[str]
