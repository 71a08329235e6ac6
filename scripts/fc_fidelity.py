"""How much of a demo dataset's planted connectivity survives preprocessing.

Compares, per subject, the functional connectivity of the demo's *truth* parcel BOLD
(``<dataset>-truth/sub-*/**/*_desc-bold_timeseries.npy``, before any scanner effect) with
that of the func stage's denoised series (``results/func/<dataset>/**/*desc-denoised_
timeseries.tsv``). Both go through the harness's FC reader
(:func:`brainharmony.evaluate.data.fc_from_series_files`: Fisher z of the Pearson
correlation over uncensored frames, averaged in z over a subject's runs). It prints

* the mean and range over subjects of the correlation between the two FC vectors
  (79,800 edges for Schaefer-400), and
* for the planted diagnosis, the AUC and balanced accuracy of a ridge classifier (penalty
  by inner cross-validation) under repeated stratified K-fold cross-validation, once on
  the truth FC and once on the denoised FC of the same subjects;
* when ``phenotypes.tsv`` has an ``age`` for every subject, the MAE (mean ± SD over folds)
  of a ridge regression of age under repeated K-fold cross-validation, same subjects.

With ``--strategies``, each named confound strategy (``func.strategy`` values) is also
applied afresh to every run's ``desc-preproc_timeseries.tsv`` (the parcel means before
denoising) with its ``desc-confounds_timeseries.tsv``; every other denoising setting is
the default (:class:`brainharmony.func.denoise.DenoiseSettings`: FD 0.5 mm censoring,
0.01-0.1 Hz, ``regress-filter``). The same two lines are printed per strategy, so the
strategies are compared on the same subjects and folds.

The numbers quoted in ``docs/demo-data.md`` and ``docs/func.md`` came from::

    .venv/bin/python scripts/fc_fidelity.py --truth resources/demo/demoB-truth \\
        --denoised results/func/demoB --strategies 24P+WM+CSF+GS 36P 18P 9P 3P
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeClassifierCV, RidgeCV
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, roc_auc_score
from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

from brainharmony.evaluate.data import FeatureTable, average_by_subject, fc_from_series_files

logger = logging.getLogger(__name__)


def read_fc(truth: Path, denoised: Path) -> tuple[FeatureTable, FeatureTable]:
    """Subject-level FC of the truth series and of the denoised series."""
    truth_files = sorted(truth.glob("sub-*/**/*_desc-bold_timeseries.npy"))
    denoised_files = sorted(denoised.glob("sub-*/**/*_desc-denoised_timeseries.tsv"))
    if not truth_files:
        raise SystemExit(f"{truth}: no sub-*/**/*_desc-bold_timeseries.npy truth series")
    if not denoised_files:
        raise SystemExit(f"{denoised}: no sub-*/**/*_desc-denoised_timeseries.tsv series")
    return fc_from_series_files(truth_files), fc_from_series_files(denoised_files)


def _run_confounds(preproc: Path) -> Path:
    stem = preproc.name.split("_space-")[0]
    return preproc.with_name(f"{stem}_desc-confounds_timeseries.tsv")


def redenoised_fc(func_dir: Path, strategy: str) -> FeatureTable:
    """Subject-level FC of every run's parcel means denoised afresh with ``strategy``.

    Runs that censoring leaves too short under the default settings are skipped with a
    warning, as the func stage excludes them.
    """
    from brainharmony.evaluate.data import fisher_z_fc
    from brainharmony.func.denoise import (
        DenoiseSettings,
        confound_matrix,
        denoise_run,
    )
    from brainharmony.io import InputDataError
    from brainharmony.series_files import read_series

    settings = DenoiseSettings(strategy=strategy)
    files = sorted(func_dir.glob("sub-*/**/*_desc-preproc_timeseries.tsv"))
    if not files:
        raise SystemExit(f"{func_dir}: no sub-*/**/*_desc-preproc_timeseries.tsv series")
    subjects, rows = [], []
    for path in files:
        series = read_series(path, require_finite=False)
        if series.tr is None:
            raise InputDataError(path, "no RepetitionTime in the sidecar")
        conf_path = _run_confounds(path)
        if not conf_path.is_file():
            raise InputDataError(conf_path, "confounds table not found")
        table = pd.read_csv(conf_path, sep="\t", na_values=["n/a"])
        if "framewise_displacement" not in table.columns:
            raise InputDataError(conf_path, "no framewise_displacement column")
        keep = settings.keep(table["framewise_displacement"].to_numpy(dtype=float))
        conf, _ = confound_matrix(table, strategy)
        out, _, excluded = denoise_run(
            series.data, series.tr, confounds=conf, keep=keep, settings=settings, scale="none"
        )
        if excluded:
            logger.warning("%s: skipped for %s (%s)", path, strategy, excluded)
            continue
        rows.append(fisher_z_fc(out))
        subjects.append(path.name.split("_")[0].removeprefix("sub-"))
    if not rows:
        raise SystemExit(f"{func_dir}: no run survives censoring for {strategy}")
    return average_by_subject(subjects, np.vstack(rows), f"fc:{strategy}")


def edge_agreement(a: FeatureTable, b: FeatureTable) -> pd.Series:
    """Per common subject, the correlation of its two FC vectors."""
    common = sorted(set(a.subjects) & set(b.subjects))
    xa, xb = a.take(common), b.take(common)
    r = [float(np.corrcoef(u, v)[0, 1]) for u, v in zip(xa, xb, strict=True)]
    return pd.Series(r, index=common, name="r")


def diagnosis_cv(x: np.ndarray, y: np.ndarray, folds: int, repeats: int) -> tuple[float, float]:
    """Mean AUC and balanced accuracy of a ridge classifier over repeated K-fold CV."""
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=0)
    auc, bacc = [], []
    for train, test in cv.split(x, y):
        model = RidgeClassifierCV(alphas=np.logspace(-1, 5, 13)).fit(x[train], y[train])
        score = model.decision_function(x[test])
        auc.append(roc_auc_score(y[test], score))
        bacc.append(balanced_accuracy_score(y[test], score > 0))
    return float(np.mean(auc)), float(np.mean(bacc))


def age_cv(x: np.ndarray, age: np.ndarray, folds: int, repeats: int) -> tuple[float, float]:
    """Mean and SD over folds of the MAE of a ridge regression under repeated K-fold CV."""
    cv = RepeatedKFold(n_splits=folds, n_repeats=repeats, random_state=0)
    mae = []
    for train, test in cv.split(x):
        model = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(x[train], age[train])
        mae.append(mean_absolute_error(age[test], model.predict(x[test])))
    return float(np.mean(mae)), float(np.std(mae))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", type=Path, required=True, help="<dataset>-truth folder")
    parser.add_argument("--denoised", type=Path, required=True, help="results/func/<dataset>")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=[],
        metavar="STRATEGY",
        help="also denoise the preproc parcel series afresh with each of these strategies",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    truth_fc, denoised_fc = read_fc(args.truth, args.denoised)
    agreement = edge_agreement(truth_fc, denoised_fc)
    if agreement.empty:
        raise SystemExit("no subject has both truth and denoised series")
    print(
        f"{len(agreement)} subjects: truth vs denoised FC, correlation over the edges: "
        f"mean {agreement.mean():.3f} (min {agreement.min():.3f}, max {agreement.max():.3f})"
    )
    phenotypes = pd.read_csv(args.truth / "phenotypes.tsv", sep="\t", dtype=str)
    phenotypes.index = phenotypes["participant_id"].str.removeprefix("sub-")
    subjects = list(agreement.index)
    y = phenotypes.reindex(subjects)["is_patient"].astype(float).to_numpy()
    if np.isnan(y).any() or len(np.unique(y)) < 2:
        raise SystemExit(f"{args.truth / 'phenotypes.tsv'}: is_patient missing or constant")
    tables = [("truth", truth_fc), ("denoised", denoised_fc)]
    for strategy in args.strategies:
        table = redenoised_fc(args.denoised, strategy)
        r = edge_agreement(truth_fc, table).reindex(subjects)
        if r.isna().any():
            raise SystemExit(f"{strategy}: no FC for subjects {list(r.index[r.isna()])}")
        print(
            f"re-denoised with {strategy}: truth vs denoised FC: mean {r.mean():.3f} "
            f"(min {r.min():.3f}, max {r.max():.3f})"
        )
        tables.append((f"{strategy} re-denoised", table))
    age = None
    if "age" in phenotypes.columns:
        age = pd.to_numeric(phenotypes.reindex(subjects)["age"], errors="coerce").to_numpy()
        if np.isnan(age).any():
            age = None
    for name, table in tables:
        x = table.take(subjects)
        auc, bacc = diagnosis_cv(x, y.astype(int), args.folds, args.repeats)
        print(
            f"diagnosis from {name} FC ({args.repeats} x {args.folds}-fold ridge): "
            f"AUC {auc:.3f}, BACC {bacc:.3f}"
        )
        if age is not None:
            mae, sd = age_cv(x, age, args.folds, args.repeats)
            print(
                f"age from {name} FC ({args.repeats} x {args.folds}-fold ridge): "
                f"MAE {mae:.2f} ± {sd:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
