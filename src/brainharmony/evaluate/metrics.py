"""Metric definitions, computed on a whole partition (never averaged over batches).

Classification (labels are strings; ``proba`` columns follow the task's class order):

* ``accuracy``: fraction of subjects whose predicted class is the true class.
* ``balanced_accuracy``: mean over the classes present in ``y_true`` of the recall
  (true positives / members of the class).
* ``f1``: binary tasks: ``2 TP / (2 TP + FP + FN)`` with the task's ``positive``
  class (0 when that is 0/0). More classes: per-class F1 over the classes present in
  ``y_true`` or ``y_pred``, averaged with equal weights (``macro``) or by support in
  ``y_true`` (``weighted``).
* ``auc``: binary: area under the ROC curve of ``p_<positive>``, i.e. the
  Mann-Whitney probability that a positive subject scores above a negative one
  (ties count one half). More classes: mean of the one-vs-rest AUCs over the classes
  with at least one member and one non-member in ``y_true``. NaN when undefined.

Regression:

* ``mae``: mean absolute error.
* ``pearson_r``: Pearson correlation of prediction and truth (NaN when either is
  constant, e.g. the null model).
* ``r2``: ``1 - SS_res / SS_tot`` with ``SS_tot`` around the partition's own mean
  (so predicting the training mean scores slightly below 0).
* ``partial_r``: tasks with ``partial_out`` (e.g. age) only: Pearson r of the
  residuals of ``y_true`` and of ``y_pred`` after an ordinary least-squares fit of
  each on the covariate (with intercept), over the partition's subjects with a
  covariate value; equals ``(r_tp - r_tc r_pc) / sqrt((1 - r_tc^2)(1 - r_pc^2))``.
  The covariate is the ``covariate`` column of the predictions table.

:func:`per_fold_metrics` scores every (dataset, task, model, seed, fold) test
partition of a predictions table; :func:`summarise` gives mean, std (ddof 1) and n
over folds and seeds. :func:`metrics_from_predictions` chains both: it is exactly how
``results/tables/metrics.csv`` is made, so the file can be recomputed from
``results/eval/predictions.tsv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.evaluate.settings import LOWER_IS_BETTER, METRICS, TaskSpec

#: Key columns of a predictions table, in file order (class probability columns follow).
PREDICTION_COLUMNS = (
    "dataset",
    "task",
    "model",
    "seed",
    "fold",
    "split",
    "subject",
    "y_true",
    "y_pred",
)
#: Optional column of a predictions table: the task's ``partial_out`` covariate value.
COVARIATE_COLUMN = "covariate"
#: Columns of metrics.csv.
METRIC_COLUMNS = ("dataset", "task", "model", "metric", "mean", "std", "n")


def _labels(values: Any) -> np.ndarray:
    return np.asarray([str(v) for v in np.asarray(values, dtype=object).ravel()], dtype=object)


def confusion_matrix(y_true: Any, y_pred: Any, classes: Sequence[str]) -> np.ndarray:
    """Counts ``C[i, j]`` of subjects of class ``classes[i]`` predicted as ``classes[j]``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Class labels (compared as strings).
    classes : sequence of str
        Row / column order. A label outside it is an error.

    Returns
    -------
    ndarray of int64, shape (n_classes, n_classes)
    """
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values, y_pred {p.size}")
    pos = {c: i for i, c in enumerate(classes)}
    unknown = sorted({*t, *p} - set(pos))
    if unknown:
        raise ValueError(f"labels {unknown} are not in classes {list(classes)}")
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, ([pos[v] for v in t], [pos[v] for v in p]), 1)
    return cm


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of exact matches (labels compared as strings)."""
    t, p = _labels(y_true), _labels(y_pred)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def balanced_accuracy(y_true: Any, y_pred: Any, classes: Sequence[str]) -> float:
    """Mean recall over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape, float), where=denom > 0)


def f1_score(
    y_true: Any,
    y_pred: Any,
    classes: Sequence[str],
    *,
    positive: str | None = None,
    average: str = "macro",
) -> float:
    """F1 on the whole partition.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
    classes : sequence of str
    positive : str, optional
        Binary tasks: the positive class (required when ``len(classes) == 2``).
    average : {"macro", "weighted"}
        More than two classes: how per-class F1 values are combined.
    """
    cm = confusion_matrix(y_true, y_pred, classes)
    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    if len(classes) == 2:
        if positive is None or positive not in classes:
            raise ValueError(f"binary F1 needs positive in {list(classes)}; got {positive!r}")
        i = list(classes).index(positive)
        return float(_f1_from_counts(tp[i : i + 1], fp[i : i + 1], fn[i : i + 1])[0])
    per = _f1_from_counts(tp, fp, fn)
    support = cm.sum(axis=1)
    used = (support + cm.sum(axis=0)) > 0
    if not used.any():
        return float("nan")
    if average == "macro":
        return float(per[used].mean())
    if average == "weighted":
        total = support.sum()
        return float((per * support).sum() / total) if total else float("nan")
    raise ValueError(f"average must be 'macro' or 'weighted'; got {average!r}")


def binary_auc(is_positive: Any, score: Any) -> float:
    """Mann-Whitney AUC: P(score of a positive > score of a negative), ties = 1/2."""
    from scipy.stats import rankdata

    y = np.asarray(is_positive, dtype=bool).ravel()
    s = np.asarray(score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0 or not np.isfinite(s).all():
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(
    y_true: Any, proba: np.ndarray | None, classes: Sequence[str], *, positive: str | None = None
) -> float:
    """AUC from class probabilities (columns in ``classes`` order); see the module notes."""
    if proba is None:
        return float("nan")
    t = _labels(y_true)
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape != (t.size, len(classes)):
        raise ValueError(f"proba must have shape ({t.size}, {len(classes)}); got {p.shape}")
    if len(classes) == 2:
        if positive is None or positive not in classes:
            raise ValueError(f"binary AUC needs positive in {list(classes)}; got {positive!r}")
        i = list(classes).index(positive)
        return binary_auc(t == positive, p[:, i])
    values = [binary_auc(t == c, p[:, i]) for i, c in enumerate(classes)]
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error."""
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


def pearson_r(y_true: Any, y_pred: Any) -> float:
    """Pearson correlation; NaN when fewer than 2 values or either side is constant."""
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.size < 2:
        return float("nan")
    if np.ptp(t) == 0 or np.ptp(p) == 0:
        return float("nan")
    tc, pc = t - t.mean(), p - p.mean()
    denom = np.sqrt((tc @ tc) * (pc @ pc))
    return float(np.clip((tc @ pc) / denom, -1.0, 1.0)) if denom > 0 else float("nan")


def partial_r(y_true: Any, y_pred: Any, covariate: Any) -> float:
    """Pearson r of truth and prediction with ``covariate`` partialled out of both.

    Each of ``y_true`` and ``y_pred`` is regressed on ``covariate`` (least squares
    with intercept) and the residuals are correlated. Subjects whose covariate is not
    finite are left out. NaN with fewer than 3 subjects, a constant covariate, or a
    side the covariate explains exactly (constant residuals).
    """
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    c = np.asarray(covariate, dtype=float).ravel()
    if not t.shape == p.shape == c.shape:
        raise ValueError(f"{t.size} true values, {p.size} predictions, {c.size} covariates")
    keep = np.isfinite(c)
    t, p, c = t[keep], p[keep], c[keep]
    if t.size < 3 or np.ptp(c) == 0:
        return float("nan")
    both = np.column_stack([t, p])
    design = np.column_stack([np.ones_like(c), c - c.mean()])
    coef, *_ = np.linalg.lstsq(design, both, rcond=None)
    res = both - design @ coef
    spread = np.linalg.norm(both - both.mean(axis=0), axis=0)
    if np.any(np.linalg.norm(res, axis=0) <= 1e-12 * spread):
        return float("nan")
    return pearson_r(res[:, 0], res[:, 1])


def r2(y_true: Any, y_pred: Any) -> float:
    """Coefficient of determination around the partition's own mean."""
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    ss_tot = float(((t - t.mean()) ** 2).sum()) if t.size else 0.0
    if ss_tot == 0.0:
        return float("nan")
    return float(1.0 - ((t - p) ** 2).sum() / ss_tot)


def score(
    task: TaskSpec,
    classes: Sequence[str] | None,
    y_true: Any,
    y_pred: Any,
    proba: np.ndarray | None = None,
    covariate: Any = None,
) -> dict[str, float]:
    """Every metric of ``task``'s type on one partition.

    Parameters
    ----------
    task : TaskSpec
    classes : sequence of str or None
        Class order of ``proba`` (classification).
    y_true, y_pred : array-like of shape (n,)
    proba : ndarray of shape (n, n_classes), optional
    covariate : array-like of shape (n,), optional
        Values of the task's ``partial_out`` covariate (gives ``partial_r``).

    Returns
    -------
    dict of str to float
        Keys: :data:`brainharmony.evaluate.settings.METRICS` of the task type;
        ``partial_r`` only when the task has ``partial_out`` and a covariate is given.
    """
    if task.type == "regression":
        out = {
            "mae": mae(y_true, y_pred),
            "pearson_r": pearson_r(y_true, y_pred),
            "r2": r2(y_true, y_pred),
        }
        if task.partial_out is not None and covariate is not None:
            out["partial_r"] = partial_r(y_true, y_pred, covariate)
        return out
    if classes is None:
        raise ValueError("classification scores need the class order")
    return {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, classes),
        "f1": f1_score(y_true, y_pred, classes, positive=task.positive, average=task.average),
        "auc": roc_auc(y_true, proba, classes, positive=task.positive),
    }


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is strictly better than ``b`` for ``metric`` (NaN is never better)."""
    if not np.isfinite(a):
        return False
    if not np.isfinite(b):
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b


def proba_columns(classes: Sequence[str]) -> list[str]:
    """Probability column names of a predictions table: ``p_<class>``."""
    return [f"p_{c}" for c in classes]


def per_fold_metrics(
    predictions: pd.DataFrame,
    tasks: Mapping[tuple[str, str], tuple[TaskSpec, Sequence[str] | None]],
    split: str = "test",
) -> pd.DataFrame:
    """Score each (dataset, task, model, seed, fold) partition of a predictions table.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Columns :data:`PREDICTION_COLUMNS` plus ``p_<class>`` columns, and a
        :data:`COVARIATE_COLUMN` for tasks with ``partial_out`` (required for them).
    tasks : mapping
        ``(dataset, task) -> (TaskSpec, classes)``.
    split : str
        Partition scored (``"test"`` for reported numbers).

    Returns
    -------
    pandas.DataFrame
        Columns ``dataset, task, model, seed, fold, n_subjects, metric, value``.
    """
    rows: list[dict[str, Any]] = []
    part = predictions.loc[predictions["split"] == split]
    keys = ["dataset", "task", "model", "seed", "fold"]
    for (ds, tk, model, seed, fold), group in part.groupby(keys, sort=True):
        if (ds, tk) not in tasks:
            raise ValueError(f"no task description for {ds}/{tk} (predictions.json)")
        spec, classes = tasks[(ds, tk)]
        proba, covariate = None, None
        if spec.type == "classification":
            cols = proba_columns(classes or ())
            missing = [c for c in cols if c not in group.columns]
            if not missing:
                values = group[cols].to_numpy(dtype=float)
                proba = values if np.isfinite(values).all() else None
            y_true, y_pred = group["y_true"].astype(str), group["y_pred"].astype(str)
        else:
            y_true = pd.to_numeric(group["y_true"]).to_numpy(float)
            y_pred = pd.to_numeric(group["y_pred"]).to_numpy(float)
            if spec.partial_out is not None:
                if COVARIATE_COLUMN not in group.columns:
                    raise ValueError(
                        f"{ds}/{tk} partials out {spec.partial_out!r} but the predictions "
                        f"have no {COVARIATE_COLUMN!r} column"
                    )
                covariate = pd.to_numeric(group[COVARIATE_COLUMN]).to_numpy(float)
        for metric, value in score(spec, classes, y_true, y_pred, proba, covariate).items():
            rows.append(
                {
                    "dataset": ds,
                    "task": tk,
                    "model": model,
                    "seed": int(seed),
                    "fold": int(fold),
                    "n_subjects": len(group),
                    "metric": metric,
                    "value": value,
                }
            )
    return pd.DataFrame(
        rows,
        columns=["dataset", "task", "model", "seed", "fold", "n_subjects", "metric", "value"],
    )


def summarise(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1; 0 for a single value) and n over folds and seeds.

    NaN values (undefined metrics) are left out of the mean; ``n`` counts the values
    used.
    """
    out = []
    for (ds, tk, model, metric), group in per_fold.groupby(
        ["dataset", "task", "model", "metric"], sort=True
    ):
        values = group["value"].to_numpy(float)
        values = values[np.isfinite(values)]
        n = int(values.size)
        mean = float(values.mean()) if n else float("nan")
        std = float(values.std(ddof=1)) if n > 1 else (0.0 if n == 1 else float("nan"))
        out.append(
            {"dataset": ds, "task": tk, "model": model, "metric": metric, "mean": mean, "std": std}
            | {"n": n}
        )
    frame = pd.DataFrame(out, columns=list(METRIC_COLUMNS))
    order = {m: i for kind in METRICS.values() for i, m in enumerate(kind)}
    frame["_o"] = frame["metric"].map(order)
    frame = frame.sort_values(["dataset", "task", "model", "_o"], kind="stable")
    return frame.drop(columns="_o").reset_index(drop=True)


def metrics_from_predictions(
    predictions: pd.DataFrame,
    tasks: Mapping[tuple[str, str], tuple[TaskSpec, Sequence[str] | None]],
) -> pd.DataFrame:
    """metrics.csv from a predictions table: test partitions, mean/std/n over folds+seeds."""
    return summarise(per_fold_metrics(predictions, tasks, split="test"))
