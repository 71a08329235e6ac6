"""Downstream evaluation: protocol, harness models, metrics, tables and the HTML report.

Modules: :mod:`.settings` (task specs, the ``evaluate:`` block), :mod:`.data` (labels,
splits, FC, embeddings), :mod:`.harness` (model registry and interface),
:mod:`.baselines`, :mod:`.external`, :mod:`.finetune` (torch, imported only when
used), :mod:`.protocol`, :mod:`.metrics`, :mod:`.stats`, :mod:`.tables`, :mod:`.figures`
and :mod:`.report`. The commands (``eval-labels``, ``evaluate``, ``tables``, ``report``)
are modules of :mod:`brainharmony.pipelines`; the workflow's paths and input lists are
:mod:`brainharmony.planning.evaluate`. See ``docs/evaluation.md``.
"""

from brainharmony.evaluate.harness import HARNESS, ModelInfo
from brainharmony.evaluate.metrics import metrics_from_predictions
from brainharmony.evaluate.settings import EvalSettings, TaskSpec, settings_from_mapping

__all__ = [
    "HARNESS",
    "EvalSettings",
    "ModelInfo",
    "TaskSpec",
    "metrics_from_predictions",
    "settings_from_mapping",
]
