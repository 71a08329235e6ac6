"""Model kinds by name, imported lazily.

Every trainable model lives in its own module exposing ``build(cfg) -> nn.Module``.
:data:`KINDS` maps the ``kind:`` of a model YAML to ``"module:function"``; nothing is
imported until :func:`build_model` (or :func:`builder`) is called for that kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

__all__ = ["KINDS", "build_model", "builder"]

#: kind -> "module:function" of its ``build(cfg)``.
KINDS: Mapping[str, str] = {
    "bh_s": "brainharmony.models.mae3d:build",
    "bh_f": "brainharmony.models.jepa:build",
    "brain_jepa": "brainharmony.models.brain_jepa:build",
    "brainlm": "brainharmony.models.brainlm:build",
    "harmonizer": "brainharmony.models.harmonizer:build",
    "lmae": "brainharmony.models.lmae:build",
    "predictor": "brainharmony.models.predictor:build",
}


def builder(kind: str) -> Callable[[Mapping[str, Any]], nn.Module]:
    """The ``build`` function registered for ``kind``.

    Raises
    ------
    ValueError
        When ``kind`` is not one of :data:`KINDS` (the message lists them).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    module_name, _, attr = KINDS[kind].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def build_model(kind: str, cfg: Mapping[str, Any]) -> nn.Module:
    """Build a model of ``kind`` from its ``model:`` mapping (the kwargs of ``build``)."""
    return builder(kind)(cfg)
