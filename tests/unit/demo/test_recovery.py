"""The planted phenotype effects can be recovered from the truth parcel signals.

Cross-validated ridge models on Fisher-z functional connectivity (upper triangle) of
the simulated, noise-free parcel BOLD series. A shuffled-label control and the sex
column (no planted effect) must stay near chance, so the test can fail both ways.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from brainharmony.demo.dynamics import fisher_fc, simulate_cohort

ALPHAS = np.logspace(0, 5, 11)


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, np.ndarray]:
    """Phenotypes and the linear kernel (Gram matrix) of the Fisher-z FC features."""
    phenotypes, series = simulate_cohort(100, tr=2.0, n_volumes=150, seed=11)
    features = fisher_fc(series)
    assert features.shape == (100, 400 * 399 // 2)
    return phenotypes, features @ features.T


def _ridge_cv_predict(gram: np.ndarray, y: np.ndarray, folds) -> np.ndarray:
    """Out-of-fold predictions of ridge regression (with intercept) on the features.

    Written in its dual form on the Gram matrix ``X X^T`` (identical predictions to
    primal ridge, much cheaper for 79,800 features). The penalty is chosen inside each
    training fold by leave-one-out error over ``ALPHAS``.
    """
    pred = np.empty(len(y), dtype=float)
    for train, test in folds:
        k = gram[np.ix_(train, train)]
        k_test = gram[np.ix_(test, train)]
        # Centre the features on the training mean (kernel form).
        row_mean = k.mean(axis=0)
        k_c = k - row_mean[None, :] - row_mean[:, None] + row_mean.mean()
        k_test_c = k_test - row_mean[None, :] - k_test.mean(axis=1)[:, None] + row_mean.mean()
        y_mean = y[train].mean()
        yc = y[train] - y_mean
        lam, vec = np.linalg.eigh(k_c)
        lam = np.clip(lam, 0.0, None)
        proj = vec.T @ yc
        best, best_err = None, np.inf
        for alpha in ALPHAS:
            shrink = lam / (lam + alpha)
            fitted = vec @ (shrink * proj)
            h_diag = (vec**2) @ shrink
            err = np.mean(((yc - fitted) / (1.0 - h_diag + 1.0 / len(train))) ** 2)
            if err < best_err:
                best, best_err = alpha, err
        dual = vec @ (proj / (lam + best))
        pred[test] = k_test_c @ dual + y_mean
    return pred


def _cv_r(gram: np.ndarray, target: np.ndarray) -> float:
    folds = KFold(5, shuffle=True, random_state=0).split(target)
    pred = _ridge_cv_predict(gram, np.asarray(target, dtype=float), folds)
    return float(np.corrcoef(pred, target)[0, 1])


def test_cohort_phenotypes(cohort) -> None:
    phenotypes, _ = cohort
    assert set(phenotypes["diagnosis"]) == {"CN", "PT"}
    assert phenotypes["is_patient"].sum() == 50
    assert phenotypes["age"].between(18, 88).all()
    # Fluid intelligence declines with age, as in Cam-CAN.
    assert np.corrcoef(phenotypes["age"], phenotypes["fluid_intelligence"])[0, 1] < -0.4


def test_age_is_predicted_from_fc(cohort) -> None:
    phenotypes, gram = cohort
    assert _cv_r(gram, phenotypes["age"].to_numpy()) > 0.8


def test_diagnosis_is_classified_from_fc(cohort) -> None:
    phenotypes, gram = cohort
    y = phenotypes["is_patient"].to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=0).split(y, y)
    score = _ridge_cv_predict(gram, 2.0 * y - 1.0, folds)  # ridge classifier
    assert roc_auc_score(y, score) > 0.8


def test_fluid_intelligence_beyond_age(cohort) -> None:
    phenotypes, gram = cohort
    fi = phenotypes["fluid_intelligence"].to_numpy(dtype=float)
    assert _cv_r(gram, fi) > 0.5
    # Its own effect (Cont network), not only through its correlation with age.
    age = phenotypes["age"].to_numpy()
    residual = fi - np.polyval(np.polyfit(age, fi, 1), age)
    assert _cv_r(gram, residual) > 0.25


def test_negative_controls_stay_near_chance(cohort) -> None:
    """No skill without a planted effect.

    Cross-validated predictions of an unrelated target correlate slightly
    *negatively* with it (each fold's training mean moves away from its test
    values), so the bound is one-sided: what a real effect would produce is a
    positive correlation.
    """
    phenotypes, gram = cohort
    age = phenotypes["age"].to_numpy()
    shuffled = [_cv_r(gram, np.random.default_rng(k).permutation(age)) for k in range(3)]
    assert max(shuffled) < 0.25
    sex = (phenotypes["sex"] == "F").to_numpy(dtype=float)
    assert _cv_r(gram, sex) < 0.25
