"""Offline check of pooled embeddings against a demo dataset's planted phenotypes.

Not the evaluation protocol (that is ``brainharmony evaluate``, with its split files and
selection on validation partitions): a quick repeated K-fold cross-validation used for the
exploratory numbers quoted in ``docs/evaluation.md`` (for example a longer-pretrained
encoder against the main job's). Per embedding file it prints, averaged over the folds of
every repeat: diagnosis AUC and balanced accuracy of an L2 logistic regression, and age MAE
of a ridge regression, both on standardised features with the penalty chosen by inner
cross-validation on the training folds.

Usage::

    .venv/bin/python scripts/offline_probe.py \\
        --phenotypes resources/demo/demoB-truth/phenotypes.tsv \\
        results/embeddings/harmonizer/demoB.npz results/embeddings/bh_s/demoB.npz

An embedding file holds ``subject`` and ``features`` (one row per series; rows of one
subject are averaged, as in the harness).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainharmony.evaluate.data import read_embeddings


def subject_features(path: Path) -> pd.DataFrame:
    """Features averaged per subject (index: subject label without ``sub-``)."""
    table = read_embeddings(path)
    return pd.DataFrame(table.values, index=pd.Index(table.subjects, name="subject"))


def probe(features: pd.DataFrame, phenotypes: pd.DataFrame, folds: int, repeats: int):
    """Mean diagnosis AUC, balanced accuracy and age MAE over ``repeats`` x ``folds``."""
    rows = phenotypes.reindex(features.index)
    if rows["is_patient"].isna().any():
        missing = rows.index[rows["is_patient"].isna()].tolist()[:5]
        raise SystemExit(f"subjects without phenotypes: {missing}")
    x = features.to_numpy()
    dx = rows["is_patient"].to_numpy(int)
    age = rows["age"].to_numpy(float)
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=0)
    auc, bacc, mae = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the inner CV
        for train, test in cv.split(x, dx):
            clf = make_pipeline(
                StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-3, 2, 6), max_iter=2000)
            ).fit(x[train], dx[train])
            p = clf.predict_proba(x[test])[:, 1]
            auc.append(roc_auc_score(dx[test], p))
            bacc.append(balanced_accuracy_score(dx[test], p > 0.5))
            reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
            reg.fit(x[train], age[train])
            mae.append(mean_absolute_error(age[test], reg.predict(x[test])))
    return float(np.mean(auc)), float(np.mean(bacc)), float(np.mean(mae)), float(age.std())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("embeddings", nargs="+", type=Path, help=".npz embedding files")
    parser.add_argument("--phenotypes", type=Path, required=True, help="truth phenotypes.tsv")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    phenotypes = pd.read_csv(args.phenotypes, sep="\t", dtype={"participant_id": str})
    phenotypes.index = phenotypes["participant_id"].str.removeprefix("sub-")
    for path in args.embeddings:
        features = subject_features(path)
        auc, bacc, mae, sd = probe(features, phenotypes, args.folds, args.repeats)
        print(
            f"{path}: {features.shape[0]} subjects x {features.shape[1]} features; "
            f"diagnosis AUC {auc:.3f}, BACC {bacc:.3f}; age MAE {mae:.2f} (age SD {sd:.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
