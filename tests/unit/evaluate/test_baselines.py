"""Baseline estimators against scikit-learn references; the row-space reduction is exact."""

import numpy as np
import pytest

from brainharmony.evaluate import baselines as B
from brainharmony.evaluate.harness import Fold
from brainharmony.evaluate.settings import settings_from_mapping


def test_kernel_ridge_path_equals_sklearn_ridge_with_intercept():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 80))  # more features than samples, as for FC
    y = x[:, 0] * 2 + rng.normal(size=30) + 5
    xe = rng.standard_normal((7, 80))
    xc = x - x.mean(axis=0)
    alphas = [10.0, 0.5]
    preds = B.kernel_ridge_path(xc @ xc.T, y[:, None], [(xe - x.mean(axis=0)) @ xc.T], alphas)
    for a, per in zip(alphas, preds, strict=True):
        ref = Ridge(alpha=a).fit(x, y).predict(xe)
        np.testing.assert_allclose(per[0][:, 0], ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_logistic_matches_sklearn_and_row_space_is_exact(n_classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(n_classes)
    x = rng.standard_normal((40, 120))
    codes = rng.integers(0, n_classes, 40)
    x[:, :3] += codes[:, None]
    xe = rng.standard_normal((9, 120))
    c = 0.5
    ref = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(x, codes).predict_proba(xe)
    full = B.logistic_proba(xe, B.fit_logistic(x, codes, n_classes, c), n_classes)
    np.testing.assert_allclose(full, ref, atol=2e-5)
    z, (ze,) = B.row_space(x, xe)
    assert z.shape == (40, 40)
    reduced = B.logistic_proba(ze, B.fit_logistic(z, codes, n_classes, c), n_classes)
    np.testing.assert_allclose(reduced, full, atol=2e-5)


def test_standardise_uses_training_statistics_only():
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, (20, 5))
    other = rng.normal(100, 50, (4, 5))
    xt, (o,) = B.standardise(x, other)
    xt2, _ = B.standardise(x, other * 7)
    np.testing.assert_array_equal(xt, xt2)
    np.testing.assert_allclose(np.sqrt((xt**2).sum(axis=1).mean()), 1.0)
    np.testing.assert_allclose(xt.mean(axis=0), 0, atol=1e-12)
    rms = np.sqrt((((x - x.mean(0)) / x.std(0)) ** 2).sum(axis=1).mean())
    np.testing.assert_allclose(o, (other - x.mean(0)) / x.std(0) / rms)


def test_null_model_majority_and_mean():
    settings = settings_from_mapping(
        {
            "tasks": {
                "d": {
                    "dx": {"target": "dx", "type": "classification", "positive": "PT"},
                    "age": {"target": "age", "type": "regression"},
                }
            }
        }
    )
    from brainharmony.evaluate.harness import create

    s = np.array(["a", "b", "c", "d", "e"], dtype=object)
    fold = Fold(
        0,
        0,
        s[:3],
        s[3:4],
        s[4:],
        np.array(["PT", "CN", "PT"], dtype=object),
        np.array(["CN"], dtype=object),
        ("CN", "PT"),
    )
    out = create("null_model", settings.task("d", "dx"), settings, {}).run_fold(fold)
    assert list(out.test.y_pred) == ["PT"]
    np.testing.assert_allclose(out.test.proba, [[1 / 3, 2 / 3]])
    fold_r = Fold(0, 0, s[:3], s[3:4], s[4:], np.array([1.0, 2.0, 6.0]), np.array([0.0]), None)
    out = create("null_model", settings.task("d", "age"), settings, {}).run_fold(fold_r)
    np.testing.assert_allclose(out.test.y_pred, [3.0])
    assert out.val_score == pytest.approx(3.0)  # MAE on val
