"""Planning of the workflow: one module per stage, above the stages.

:func:`from_config` turns a validated workflow config into :class:`Plan`, one object
with one attribute per stage (``PLAN.ingest``, ``PLAN.anat``, ``PLAN.func``,
``PLAN.qc``, ``PLAN.geometry``, ``PLAN.multitr``, ``PLAN.train``, ``PLAN.evaluate``),
which ``workflow/rules/common.smk`` builds once; the rule files read only that object,
the outputs of other rules and the input functions of ``common.smk``. Each stage module
(:mod:`.ingest`, :mod:`.anat`, :mod:`.func`, :mod:`.qc`, :mod:`.geometry`,
:mod:`.multitr`, :mod:`.train`, :mod:`.evaluate`) holds the stage's settings, the path
templates of its rules' outputs, its option strings and its checkpoint-dependent input
lists. Planning may import the stages' settings, defaults and naming modules; no stage
module imports planning. Nothing here imports numpy-heavy code at import time (the
Snakefile imports it when it parses).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brainharmony.planning import anat, evaluate, func, geometry, ingest, multitr, qc, train


@dataclass(frozen=True)
class Plan:
    """The workflow's plan: one attribute per stage."""

    ingest: ingest.IngestPlan
    anat: anat.AnatPlan
    func: func.FuncPlan
    qc: qc.QCPlan
    geometry: geometry.GeometryPlan
    multitr: multitr.MultiTRPlan
    train: train.TrainPlan
    evaluate: evaluate.EvalPlan


def from_config(config: Mapping[str, Any], basedir: str = ".") -> Plan:
    """The plan of a validated workflow config (``basedir``: the workflow's folder).

    Raises
    ------
    ValueError
        A setting no stage can run with (the message names it).
    """
    train_plan = train.plan_from_config(config, basedir)
    return Plan(
        ingest=ingest.plan_from_config(config),
        anat=anat.plan_from_config(config),
        func=func.settings_from_config(config),
        qc=qc.QCPlan(),
        geometry=geometry.geometry_from_config(config),
        multitr=multitr.multitr_from_config(config),
        train=train_plan,
        evaluate=evaluate.plan_from_config(config, train_plan.variants),
    )
