"""Paired comparison of two models over the same cross-validation folds.

The folds of K-fold cross-validation share training subjects, so the per-fold score
differences are positively correlated and the plain paired t-test is anti-
conservative (it finds differences that are not there). Nadeau & Bengio (2003,
Machine Learning 52:239) correct the variance of the mean difference for this:

    t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)),   df = J - 1,

with ``d`` the J per-fold differences (here folds x seeds, as in Bouckaert & Frank's
corrected repeated k-fold test) and ``n_test/n_train`` the ratio of test to training
subjects per fold (averaged over folds). The p-value is two-sided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.evaluate.metrics import better
from brainharmony.evaluate.settings import LOWER_IS_BETTER

TEST_NAME = "corrected resampled t-test (Nadeau & Bengio 2003), two-sided"
#: Columns of tests.csv.
TEST_COLUMNS = (
    "dataset",
    "task",
    "model",
    "reference",
    "role",
    "metric",
    "mean_diff",
    "t",
    "df",
    "p",
    "n",
    "test_train_ratio",
    "test",
)


@dataclass(frozen=True)
class TTestResult:
    """Outcome of :func:`corrected_resampled_ttest`.

    Attributes
    ----------
    mean : float
        Mean difference.
    t : float
        Corrected t statistic (inf when every difference is equal and non-zero).
    df : int
        Degrees of freedom (J - 1).
    p : float
        Two-sided p-value (NaN with fewer than two differences).
    n : int
        Number of paired differences J.
    """

    mean: float
    t: float
    df: int
    p: float
    n: int


def corrected_resampled_ttest(differences: Iterable[float], test_train_ratio: float) -> TTestResult:
    """Nadeau & Bengio's corrected resampled t-test of a mean difference against 0.

    Parameters
    ----------
    differences : iterable of float
        Per-fold (and per-seed) score differences, model minus reference, oriented so
        that positive means the model is better.
    test_train_ratio : float
        ``n_test / n_train`` of a fold (> 0).

    Returns
    -------
    TTestResult
    """
    from scipy import stats

    d = np.asarray(list(differences), dtype=float)
    d = d[np.isfinite(d)]
    if test_train_ratio <= 0 or not np.isfinite(test_train_ratio):
        raise ValueError(f"test_train_ratio must be a positive number; got {test_train_ratio}")
    j = int(d.size)
    if j < 2:
        return TTestResult(float(d.mean()) if j else float("nan"), float("nan"), 0, float("nan"), j)
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    if var <= (1e-12 * float(np.abs(d).max())) ** 2:  # equal differences (to rounding)
        var = 0.0
    se = np.sqrt((1.0 / j + test_train_ratio) * var)
    if se == 0.0:
        if mean == 0.0:
            return TTestResult(0.0, 0.0, j - 1, 1.0, j)
        return TTestResult(mean, float(np.sign(mean) * np.inf), j - 1, 0.0, j)
    t = mean / se
    p = float(2.0 * stats.t.sf(abs(t), df=j - 1))
    return TTestResult(mean, float(t), j - 1, p, j)


def best_model(per_fold: pd.DataFrame, metric: str, candidates: Iterable[str]) -> str | None:
    """The candidate with the best mean ``metric`` (ties: the earlier candidate)."""

    best, best_value = None, float("nan")
    sub = per_fold.loc[per_fold["metric"] == metric]
    for name in candidates:
        values = sub.loc[sub["model"] == name, "value"].to_numpy(float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        value = float(values.mean())
        if best is None or better(metric, value, best_value):
            best, best_value = name, value
    return best


def paired_tests(
    per_fold: pd.DataFrame,
    primary_metric: Mapping[str, str],
    task_types: Mapping[tuple[str, str], str],
    baselines: Iterable[str],
    ratios: Mapping[tuple[str, str], float],
    null_model: str = "null_model",
) -> pd.DataFrame:
    """Every model against the null model and against the best baseline, per task.

    Parameters
    ----------
    per_fold : pandas.DataFrame
        From :func:`brainharmony.evaluate.metrics.per_fold_metrics`.
    primary_metric : mapping
        Task type -> the metric tested.
    task_types : mapping
        ``(dataset, task) -> "classification" | "regression"``.
    baselines : iterable of str
        Names of baseline models (the null model is one).
    ratios : mapping
        ``(dataset, task) -> mean n_test / n_train`` over its folds.
    null_model : str
        Name of the null model.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TEST_COLUMNS`; ``role`` is ``"vs_null"`` or ``"best_baseline"``
        (not ``"null"``, which pandas reads back as a missing value).
        ``mean_diff`` is oriented so that positive means the model is better.
    """
    baselines = list(baselines)
    rows: list[dict[str, Any]] = []
    for (ds, tk), group in per_fold.groupby(["dataset", "task"], sort=True):
        metric = primary_metric[task_types[(ds, tk)]]
        sub = group.loc[group["metric"] == metric]
        table = sub.pivot_table(
            index=["seed", "fold"], columns="model", values="value", aggfunc="first"
        )
        models = list(dict.fromkeys(sub["model"]))
        present_baselines = [b for b in baselines if b in table.columns]
        best = best_model(sub, metric, present_baselines)
        refs = []
        if null_model in table.columns:
            refs.append(("vs_null", null_model))
        if best is not None:
            refs.append(("best_baseline", best))
        ratio = float(ratios.get((ds, tk), float("nan")))
        for role, ref in refs:
            for model in models:
                if model == ref or (role == "best_baseline" and model in baselines):
                    continue
                diff = table[model] - table[ref]
                if metric in LOWER_IS_BETTER:
                    diff = -diff
                res = corrected_resampled_ttest(diff.to_numpy(float), ratio)
                rows.append(
                    {
                        "dataset": ds,
                        "task": tk,
                        "model": model,
                        "reference": ref,
                        "role": role,
                        "metric": metric,
                        "mean_diff": res.mean,
                        "t": res.t,
                        "df": res.df,
                        "p": res.p,
                        "n": res.n,
                        "test_train_ratio": ratio,
                        "test": TEST_NAME,
                    }
                )
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS))
