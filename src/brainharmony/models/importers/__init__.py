"""Converters of released checkpoints into this package's models (by source name).

Each converter is ``convert(checkpoint, *, extra, overrides=None) -> ImportedModel``: it
takes the already-loaded checkpoint mapping (``brainharmony import-weights`` loads the file
safely), the extra files the official model reads besides its state dict (``extra``: name
-> path) and optional model-configuration overrides, and returns the model kind, its full
configuration and its complete state dict. :data:`SOURCES` maps a source name to
``"module:function"``; a converter's module is imported only when that source is chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the converters, not by the registry
    import torch

__all__ = ["SOURCES", "CheckpointMismatch", "ImportedModel", "SourceUnavailable", "converter"]


@dataclass
class ImportedModel:
    """A converted checkpoint.

    Attributes
    ----------
    kind : str
        The model kind (``models.registry.KINDS``).
    model_cfg : dict
        The ``model:`` mapping that rebuilds it.
    state_dict : dict of str to Tensor
        Its complete state dict.
    notes : list of str
        Compatibility modes set, keys dropped and why, parts left freshly initialised.
    """

    kind: str
    model_cfg: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)


class CheckpointMismatch(ValueError):
    """The checkpoint is not what the chosen source expects (the message says why)."""


class SourceUnavailable(RuntimeError):
    """A registered source whose converter module is not installed."""


#: source name -> "module:function" of its converter.
SOURCES: Mapping[str, str] = {
    "bh-f": "brainharmony.models.importers.brainharmonix:convert_bh_f",
    "bh-s": "brainharmony.models.importers.brainharmonix:convert_bh_s",
    "harmonizer": "brainharmony.models.importers.brainharmonix:convert_harmonizer",
    "brain-jepa": "brainharmony.models.importers.brain_jepa:convert",
}


def converter(source: str) -> Callable[..., ImportedModel]:
    """The converter registered for ``source``.

    Raises
    ------
    ValueError
        Unknown source (the message lists the known ones).
    SourceUnavailable
        The source is registered but its module is not part of this installation.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")
    module_name, _, attr = SOURCES[source].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise SourceUnavailable(
            f"the converter of source {source!r} ({module_name}) is not part of this installation"
        ) from None
    return getattr(module, attr)
