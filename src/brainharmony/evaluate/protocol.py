"""The evaluation protocol of one task: folds x seeds x models -> long predictions.

Rules
-----
* **Folds** come from the split files (``brainharmony splits``, one folder per
  seed); the protocol never draws its own.
* **Same subjects for every model.** A fold's partitions are restricted to the
  subjects that have a label and whose inputs every requested model has (FC,
  embeddings, external test predictions): the intersection, so paired comparisons
  compare like with like. The subjects left out are listed in the sidecar, per model
  (``SubjectsWithoutInputs``) and with the reason an earlier stage gave
  (``SubjectsLeftOut``: e.g. ``anatomy excluded: <why>`` for a T1w the anatomy QC
  gate failed, whose runs the func stage then excluded and whose volume is not in the
  T1 shard, so no model has it).
* **Selection on val, numbers on test.** A model sees the labels of train and val
  only (:class:`brainharmony.evaluate.harness.Fold` has no test labels); it chooses
  its hyperparameters on val and returns test predictions of the chosen candidate.
  Test labels are joined afterwards, only to write ``y_true``.
* **Outputs**: ``predictions.tsv`` (val and test rows, long format), ``selection.tsv``
  (chosen hyperparameters and validation score per model, seed and fold) and
  ``predictions.json`` (task, classes, fold sizes, exclusions, provenance).

The command line (``brainharmony evaluate``) is :mod:`brainharmony.pipelines.evaluate`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.evaluate.data import (
    SplitSet,
    json_dump_safe,
)
from brainharmony.evaluate.harness import Fold, HarnessModel, Output, create, model_info
from brainharmony.evaluate.metrics import COVARIATE_COLUMN, PREDICTION_COLUMNS, proba_columns
from brainharmony.evaluate.settings import EvalSettings, SettingsError, TaskSpec
from brainharmony.io import InputDataError, provenance, write_json, write_tsv

logger = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """Everything :func:`evaluate_task` produced.

    Attributes
    ----------
    predictions : pandas.DataFrame
        Long format: :data:`PREDICTION_COLUMNS` + ``p_<class>``.
    selection : pandas.DataFrame
        ``dataset, task, model, seed, fold, params, val_score``.
    info : dict
        Task description, classes, fold sizes, exclusions, skipped models.
    """

    predictions: pd.DataFrame
    selection: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)


def _partition(fold_table: pd.DataFrame, split: str, eligible: set[str]) -> np.ndarray:
    subjects = fold_table.loc[fold_table["split"] == split, "subject"].astype(str)
    return np.asarray(sorted(s for s in subjects if s in eligible), dtype=object)


def _rows(
    task: TaskSpec,
    model: str,
    seed: int,
    fold: int,
    split: str,
    subjects: np.ndarray,
    y_true: np.ndarray,
    out: Output,
    classes: Sequence[str] | None,
    covariate: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    if out.y_pred.shape[0] != subjects.size:
        raise ValueError(
            f"{model}: {out.y_pred.shape[0]} predictions for {subjects.size} {split} subjects"
        )
    frame = pd.DataFrame(
        {
            "dataset": task.dataset,
            "task": task.name,
            "model": model,
            "seed": seed,
            "fold": fold,
            "split": split,
            "subject": subjects,
            "y_true": y_true,
            "y_pred": out.y_pred,
        }
    )
    if covariate is not None:
        frame[COVARIATE_COLUMN] = [covariate.get(str(s), np.nan) for s in subjects]
    if task.type == "classification":
        cols = proba_columns(classes or ())
        if out.proba is None:
            for c in cols:
                frame[c] = np.nan
        else:
            proba = np.asarray(out.proba, dtype=float)
            if proba.shape != (subjects.size, len(cols)):
                raise ValueError(f"{model}: probabilities of shape {proba.shape}")
            for i, c in enumerate(cols):
                frame[c] = proba[:, i]
    return frame


def _left_out(
    subjects: set[str], have_of: Mapping[str, set[str]], exclusions: Mapping[str, str]
) -> dict[str, str]:
    """Subject -> why it is left out for every model.

    The reason an earlier stage recorded (``exclusions``), else the models that have
    no input for the subject.
    """
    out = {}
    for subject in sorted(subjects):
        reason = exclusions.get(subject)
        if not reason:
            models = [name for name, have in have_of.items() if subject not in have]
            reason = "no input for " + ", ".join(models)
        out[subject] = reason
    return out


def evaluate_task(
    task: TaskSpec,
    settings: EvalSettings,
    labels: pd.Series,
    splits: Sequence[SplitSet],
    inputs: Mapping[str, Any],
    models: Sequence[str] | None = None,
    covariates: pd.Series | None = None,
    not_run: Mapping[str, str] | None = None,
) -> TaskResult:
    """Run every model on every fold of every split seed of one task.

    Parameters
    ----------
    task : TaskSpec
    settings : EvalSettings
    labels : pandas.Series
        Subject -> label (from :func:`brainharmony.evaluate.data.task_labels`).
    splits : sequence of SplitSet
        One per split seed.
    inputs : mapping
        Model inputs (see :func:`brainharmony.evaluate.harness.create`); an optional
        ``"exclusions"`` mapping (subject -> reason, from
        :func:`brainharmony.evaluate.data.subject_exclusions`) gives the reasons
        recorded for subjects left out.
    models : sequence of str, optional
        Harness model names; default ``settings.models``.
    covariates : pandas.Series, optional
        Subject -> value of the task's ``partial_out`` covariate (from
        :func:`brainharmony.evaluate.data.covariate_series`); written to the
        ``covariate`` column for ``partial_r``. Required when the task has one. The
        models never see it.

    Returns
    -------
    TaskResult
    """
    names = list(models if models is not None else settings.models)
    if not names:
        raise SettingsError("no models to evaluate")
    not_run = dict(not_run or {})
    both = sorted(set(not_run) & set(names))
    if both:
        raise SettingsError(f"models {both} are both evaluated and listed as not run")
    for name in names:
        model_info(name)
    if not splits:
        raise ValueError("no split folders given")
    if task.partial_out is not None and covariates is None:
        raise SettingsError(
            f"{task.dataset}/{task.name} partials out {task.partial_out!r}: pass its values"
        )
    covariate_of = None if task.partial_out is None else covariates.to_dict()  # type: ignore[union-attr]
    seeds = [s.seed for s in splits]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two split folders have the same seed: {seeds}")
    classes: tuple[str, ...] | None = None
    if task.type == "classification":
        classes = task.resolve_classes(labels.astype(str).tolist())
    harness: list[HarnessModel] = []
    skipped: dict[str, str] = {}
    for name in names:
        model = create(name, task, settings, inputs)
        if not model.supports(task):
            skipped[name] = f"not applicable to {task.type}"
            logger.info("%s/%s: %s skipped (%s)", task.dataset, task.name, name, skipped[name])
            continue
        harness.append(model)
    if not harness:
        raise SettingsError(f"{task.dataset}/{task.name}: no model applies to this task")
    for model in harness:
        if hasattr(model, "check_truth"):
            model.check_truth(labels)

    labelled = set(labels.index.astype(str))
    split_subjects = set().union(*(s.subjects() for s in splits))
    unlabelled = sorted(split_subjects - labelled)
    if unlabelled:
        raise InputDataError(
            splits[0].path,
            f"{len(unlabelled)} subjects of the splits have no {task.target!r} label "
            f"(e.g. {unlabelled[:5]}); were the splits made from other tables?",
        )
    eligible = set(split_subjects)
    lost: dict[str, list[str]] = {}
    have_of: dict[str, set[str]] = {}
    for model in harness:
        have = model.available_subjects()
        if have is not None:
            have_of[model.name] = have
            gone = sorted(eligible - have)
            if gone:
                lost[model.name] = gone
            eligible &= have
    if lost:
        for name, gone in lost.items():
            logger.warning(
                "%s/%s: %d subjects lack inputs of %s and are left out for every model: %s",
                task.dataset,
                task.name,
                len(gone),
                name,
                gone[:10],
            )
    # a subject an earlier stage excluded (no usable anatomy or runs) is left out even
    # for models that need no input of it (null model), so every model sees one set
    exclusions = dict(inputs.get("exclusions") or {})
    upstream = sorted(eligible & set(exclusions))
    if upstream:
        logger.warning(
            "%s/%s: %d subjects excluded by an earlier stage are left out: %s",
            task.dataset,
            task.name,
            len(upstream),
            upstream[:10],
        )
        eligible -= set(upstream)
    left_out = _left_out(split_subjects - eligible, have_of, exclusions)
    label_of = labels.to_dict()
    frames: list[pd.DataFrame] = []
    selection: list[dict[str, Any]] = []
    fold_sizes: dict[str, dict[str, int]] = {}
    for split_set in splits:
        for k, table in sorted(split_set.folds.items()):
            train = _partition(table, "train", eligible)
            val = _partition(table, "val", eligible)
            test = _partition(table, "test", eligible)
            where = f"{split_set.path}/fold-{k}.tsv"
            if min(train.size, val.size, test.size) == 0:
                raise InputDataError(
                    where,
                    f"after removing subjects without inputs, train/val/test have "
                    f"{train.size}/{val.size}/{test.size} subjects; every partition needs one",
                )
            y_train = np.asarray([label_of[s] for s in train], dtype=object)
            y_val = np.asarray([label_of[s] for s in val], dtype=object)
            if task.type == "regression":
                y_train, y_val = y_train.astype(float), y_val.astype(float)
            elif len(set(y_train)) < 2:
                logger.warning("%s: the training partition has one class only", where)
            fold = Fold(split_set.seed, k, train, val, test, y_train, y_val, classes)
            fold_sizes[f"{split_set.seed}/{k}"] = {
                "train": int(train.size),
                "val": int(val.size),
                "test": int(test.size),
            }
            y_test = np.asarray([label_of[s] for s in test], dtype=object)
            if task.type == "regression":
                y_test = y_test.astype(float)
            for model in harness:
                outcome = model.run_fold(fold)
                if outcome.val is not None:
                    frames.append(
                        _rows(
                            task,
                            model.name,
                            fold.seed,
                            k,
                            "val",
                            val,
                            y_val,
                            outcome.val,
                            classes,
                            covariate_of,
                        )
                    )
                frames.append(
                    _rows(
                        task,
                        model.name,
                        fold.seed,
                        k,
                        "test",
                        test,
                        y_test,
                        outcome.test,
                        classes,
                        covariate_of,
                    )
                )
                selection.append(
                    {
                        "dataset": task.dataset,
                        "task": task.name,
                        "model": model.name,
                        "seed": fold.seed,
                        "fold": k,
                        "params": json_dump_safe(outcome.params),
                        "val_score": outcome.val_score,
                    }
                )
                logger.info(
                    "%s/%s seed %d fold %d %s: %s val %s = %.4g",
                    task.dataset,
                    task.name,
                    fold.seed,
                    k,
                    model.name,
                    outcome.params,
                    settings.select_metric[task.type],
                    outcome.val_score,
                )
    predictions = pd.concat(frames, ignore_index=True)
    cols = list(PREDICTION_COLUMNS) + ([COVARIATE_COLUMN] if covariate_of is not None else [])
    cols += proba_columns(classes) if classes else []
    predictions = predictions[cols]
    ratios = [v["test"] / v["train"] for v in fold_sizes.values()]
    info = {
        "Task": task.to_dict(),
        "Classes": list(classes) if classes else None,
        "Models": [m.name for m in harness],
        "SkippedModels": skipped,
        "NotRun": not_run,
        "FoldSizes": fold_sizes,
        "TestTrainRatio": float(np.mean(ratios)),
        "Seeds": seeds,
        "SubjectsEvaluated": len(eligible),
        "SubjectsWithoutInputs": lost,
        "SubjectsLeftOut": left_out,
        "SelectMetric": settings.select_metric[task.type],
    }
    return TaskResult(predictions, pd.DataFrame(selection), info)


def write_task_result(
    result: TaskResult,
    out: Path,
    settings: EvalSettings,
    inputs: Sequence[Path] = (),
) -> dict[str, Path]:
    """Write ``predictions.tsv`` (``out``), ``selection.tsv`` and ``predictions.json``."""
    out = Path(out)
    paths = {
        "selection": write_tsv(out.with_name("selection.tsv"), result.selection),
        "sidecar": write_json(
            out.with_suffix(".json"),
            {
                "Description": "Per-fold predictions of every model (val and test partitions)",
                "Columns": {
                    "seed": "split seed (repeat of the cross-validation)",
                    "fold": "fold number of that seed",
                    "split": "val (used to choose hyperparameters) or test (reported)",
                    "y_true": "label / value",
                    "y_pred": "predicted class / value",
                    "p_<class>": "class probability (normalised scores for ridge classifiers)",
                    "covariate": "value of the task's partial_out covariate (partial_r only)",
                },
                **result.info,
                "Settings": settings.to_dict(),
                "Provenance": provenance(step="evaluate", inputs=inputs),
            },
        ),
        "predictions": write_tsv(out, result.predictions, float_format="%.10g"),
    }
    return paths


def task_settings_json(settings: EvalSettings) -> str:
    """The settings as one JSON string (what a workflow rule passes to ``--settings``)."""
    return json.dumps(settings.to_dict(), sort_keys=True)
