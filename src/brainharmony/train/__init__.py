"""Training infrastructure shared by every model: configs, optimisation, loop, data.

Re-exports only; see the submodules (:mod:`.config`, :mod:`.optim`, :mod:`.checkpoint`,
:mod:`.metrics`, :mod:`.data`, :mod:`.distributed`, :mod:`.loop`; the command is
:mod:`brainharmony.pipelines.train`).
"""

from brainharmony.train.checkpoint import load_trained
from brainharmony.train.config import (
    ModelConfig,
    ModelConfigError,
    OptimConfig,
    TrainConfig,
    load_config,
)
from brainharmony.train.loop import NonFiniteLossError, TrainResult, train

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "NonFiniteLossError",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "load_config",
    "load_trained",
    "train",
]
