"""Seeded, subject-level cross-validation folds with train/val/test partitions.

Rules
-----
* **Subject level.** The input may have several rows per subject (sessions,
  runs); they are collapsed first, so every row of a subject lands in the same
  partition. A classification label must be the same on all of a subject's
  rows (an error otherwise); a regression target is averaged over them.
  Subjects without a target are left out (and counted in the sidecar).
* **Folds.** ``K`` folds over subjects. Fold ``k``'s *test* partition is the
  k-th held-out part; *val* is carved from the remaining subjects
  (``val_fraction`` of them, stratified the same way); the rest is *train*.
  Every subject is in the test partition of exactly one fold.
* **Stratification.** Classification: by label (:class:`StratifiedKFold`).
  Regression: by ``n_bins`` equal-count bins of the target ("binned
  stratification"). Strata with fewer members than needed (``K`` for the folds,
  2 for the val split) are pooled into one "rare" stratum, which joins the
  largest stratum if it is still too small.
* **Sites** (``site_mode``): ``"stratify"`` stratifies jointly on the
  label/bin and the site, so every fold has each site in proportion;
  ``"group"`` keeps each site whole (:class:`StratifiedGroupKFold`: a fold's
  test subjects come from sites absent from its train and val partitions, which
  measures generalisation to new sites and needs at least ``K`` sites). In group
  mode the val partition is still drawn from the training sites (model selection
  in-distribution).
* **Determinism.** Subjects are sorted before splitting and every random choice
  derives from ``seed``: the same input and seed give byte-identical files.

Output: one TSV per fold, ``fold-<k>.tsv`` (``k`` from 0), with columns
``subject, fold, split`` (``split`` in ``train``, ``val``, ``test``), plus
``splits.json`` with the parameters, counts and provenance.

The command line (``brainharmony splits``) is :mod:`brainharmony.pipelines.splits`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from brainharmony.io import InputDataError, PathLike, provenance, write_json, write_tsv

logger = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
SiteMode = Literal["none", "stratify", "group"]
SPLITS = ("train", "val", "test")
_RARE = "__rare__"


@dataclass(frozen=True)
class SplitResult:
    """Folds and partitions.

    Attributes
    ----------
    assignments : pandas.DataFrame
        Columns ``subject, fold, split``; one row per subject and fold.
    excluded : list of str
        Subjects left out (no target).
    parameters : dict
    """

    assignments: pd.DataFrame
    excluded: list[str]
    parameters: dict[str, Any]


def _pool_rare(strata: pd.Series, min_count: int) -> pd.Series:
    counts = strata.value_counts()
    rare = counts.index[counts < min_count]
    if len(rare) == 0:
        return strata
    out = strata.where(~strata.isin(rare), _RARE)
    if (out == _RARE).sum() < min_count:
        big = out[out != _RARE].value_counts()
        if len(big):
            out = out.where(out != _RARE, big.index[0])
    return out


def _per_subject(
    table: pd.DataFrame, subject: str, target: str, task: Task, site: str | None
) -> tuple[pd.DataFrame, list[str]]:
    for col in (subject, target, *(() if site is None else (site,))):
        if col not in table.columns:
            raise ValueError(f"column {col!r} not in the table; columns: {list(table.columns)}")
    df = table[[subject, target, *(() if site is None else (site,))]].copy()
    df[subject] = df[subject].astype(str)
    missing = df[target].isna() | (df[target].astype(str).isin(["n/a", "nan", ""]))
    excluded = sorted(set(df.loc[missing, subject]) - set(df.loc[~missing, subject]))
    df = df.loc[~missing]
    if df.empty:
        raise ValueError(f"no subject has a value in {target!r}")
    grouped = df.groupby(subject, sort=True)
    if task == "classification":
        n_labels = grouped[target].nunique()
        bad = n_labels.index[n_labels > 1].tolist()
        if bad:
            raise ValueError(
                f"subjects {bad[:10]} have different {target!r} labels across rows; "
                "a classification label must be constant per subject"
            )
        y = grouped[target].first().astype(str)
    else:
        values = pd.to_numeric(df[target], errors="coerce")
        if values.isna().any():
            raise ValueError(f"regression target {target!r} has non-numeric values")
        y = values.groupby(df[subject]).mean().sort_index()
    per = pd.DataFrame({"y": y})
    if site is not None:
        n_sites = grouped[site].nunique()
        bad = n_sites.index[n_sites > 1].tolist()
        if bad:
            raise ValueError(f"subjects {bad[:10]} have more than one {site!r}")
        per["site"] = grouped[site].first().astype(str)
    return per, excluded


def make_splits(
    table: pd.DataFrame,
    target: str,
    *,
    task: Task = "classification",
    n_folds: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
    n_bins: int = 5,
    subject_column: str = "subject",
    site_column: str | None = None,
    site_mode: SiteMode = "none",
) -> SplitResult:
    """Subject-level stratified K-fold with train/val/test per fold.

    Parameters
    ----------
    table : pandas.DataFrame
        One or more rows per subject (e.g. ``scans.tsv`` or ``participants.tsv``).
    target : str
        Column to stratify on (label or continuous target).
    task : {"classification", "regression"}
    n_folds : int
        K >= 2.
    seed : int
    val_fraction : float
        Fraction of each fold's non-test subjects put in val, in [0, 1).
    n_bins : int
        Equal-count bins for regression stratification.
    subject_column : str
    site_column : str, optional
    site_mode : {"none", "stratify", "group"}
        How sites are used (see the module notes); needs ``site_column``
        unless ``"none"``.

    Returns
    -------
    SplitResult
    """
    from sklearn.model_selection import (
        StratifiedGroupKFold,
        StratifiedKFold,
        StratifiedShuffleSplit,
    )

    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression'; got {task!r}")
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    if site_mode not in ("none", "stratify", "group"):
        raise ValueError(f"site_mode must be 'none', 'stratify' or 'group'; got {site_mode!r}")
    if site_mode != "none" and site_column is None:
        raise ValueError(f"site_mode={site_mode!r} needs site_column")
    site = site_column if site_mode != "none" else None
    per, excluded = _per_subject(table, subject_column, target, task, site)
    n_subj = len(per)
    if n_subj < n_folds:
        raise ValueError(f"{n_subj} subjects with a {target!r} value; n_folds={n_folds} needs more")
    if task == "classification":
        base = per["y"].astype(str)
    else:
        bins = min(n_bins, n_subj)
        ranks = per["y"].rank(method="first")
        base = pd.Series(
            pd.qcut(ranks, bins, labels=False).astype(int).astype(str), index=per.index
        )
    strata = base + "|" + per["site"] if site_mode == "stratify" else base
    subjects = per.index.to_numpy()
    fold_strata = _pool_rare(strata, n_folds)
    placeholder = np.zeros(n_subj)
    if site_mode == "group":
        n_sites = per["site"].nunique()
        if n_sites < n_folds:
            raise ValueError(
                f"site_mode='group' needs at least n_folds={n_folds} sites; found {n_sites}"
            )
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        folds = splitter.split(placeholder, fold_strata.to_numpy(), groups=per["site"].to_numpy())
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        folds = splitter.split(placeholder, fold_strata.to_numpy())
    rows: list[pd.DataFrame] = []
    for k, (rest_idx, test_idx) in enumerate(folds):
        split = np.full(n_subj, "train", dtype=object)
        split[test_idx] = "test"
        n_val = round(val_fraction * rest_idx.size)
        if n_val > 0:
            rest_strata = _pool_rare(strata.iloc[rest_idx], 2)
            if n_val >= rest_idx.size:
                raise ValueError(f"fold {k}: val_fraction={val_fraction} leaves no train subject")
            n_classes = rest_strata.nunique()
            if n_val < n_classes or rest_idx.size - n_val < n_classes:
                # too few subjects to stratify the val split: plain seeded shuffle
                rng = np.random.default_rng([seed, k])
                val_idx = rng.choice(rest_idx, size=n_val, replace=False)
            else:
                sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed + k)
                _, val_local = next(sss.split(np.zeros(rest_idx.size), rest_strata.to_numpy()))
                val_idx = rest_idx[val_local]
            split[val_idx] = "val"
        rows.append(pd.DataFrame({"subject": subjects, "fold": k, "split": split}))
    assignments = pd.concat(rows, ignore_index=True)
    params = {
        "target": target,
        "task": task,
        "n_folds": n_folds,
        "seed": seed,
        "val_fraction": val_fraction,
        "n_bins": n_bins if task == "regression" else None,
        "site_column": site_column,
        "site_mode": site_mode,
    }
    return SplitResult(assignments, excluded, params)


def check_splits(assignments: pd.DataFrame) -> None:
    """Raise if a subject is in two partitions of a fold, or not tested exactly once."""
    dup = assignments.duplicated(["subject", "fold"], keep=False)
    if dup.any():
        bad = assignments.loc[dup, ["subject", "fold"]].drop_duplicates().head(5)
        raise AssertionError(f"subjects in two partitions of one fold: {bad.to_dict('records')}")
    bad_split = ~assignments["split"].isin(SPLITS)
    if bad_split.any():
        raise AssertionError(f"unknown split names {assignments.loc[bad_split, 'split'].unique()}")
    tested = assignments.loc[assignments["split"] == "test"].groupby("subject").size()
    everyone = assignments["subject"].unique()
    if len(tested) != len(everyone) or (tested != 1).any():
        raise AssertionError("not every subject is in the test partition of exactly one fold")


def write_splits(
    result: SplitResult, out_dir: PathLike, inputs: Sequence[PathLike] = ()
) -> list[Path]:
    """Write ``fold-<k>.tsv`` per fold and ``splits.json``; return the TSV paths."""
    check_splits(result.assignments)
    out = Path(out_dir)
    paths: list[Path] = []
    counts: dict[str, dict[str, int]] = {}
    for k, part in result.assignments.groupby("fold", sort=True):
        rank = part["split"].map({name: i for i, name in enumerate(SPLITS)})
        part = part.assign(_rank=rank).sort_values(["_rank", "subject"], kind="stable")
        paths.append(write_tsv(out / f"fold-{k}.tsv", part[["subject", "fold", "split"]]))
        counts[str(k)] = {name: int((part["split"] == name).sum()) for name in SPLITS}
    write_json(
        out / "splits.json",
        {
            "Description": "Subject-level cross-validation folds (test = held-out fold)",
            "Counts": counts,
            "NSubjects": int(result.assignments["subject"].nunique()),
            "ExcludedNoTarget": result.excluded,
            **provenance(step="splits", inputs=inputs, parameters=result.parameters),
        },
    )
    return paths


def read_table(path: PathLike, subject_column: str = "subject") -> pd.DataFrame:
    """Read a TSV with a subject column (``participant_id`` with ``sub-`` also accepted)."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "table not found")
    frame = pd.read_csv(p, sep="\t", dtype=str, na_values=["n/a"], keep_default_na=False)
    if subject_column not in frame.columns:
        if "participant_id" in frame.columns:
            frame[subject_column] = frame["participant_id"].str.removeprefix("sub-")
        else:
            raise InputDataError(p, f"no {subject_column!r} or 'participant_id' column")
    return frame
