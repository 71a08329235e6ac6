"""Metric definitions: whole-split values on known cases, positive class, agreement with sklearn."""

import numpy as np
import pandas as pd
import pytest

from brainharmony.evaluate import metrics as M
from brainharmony.evaluate.settings import TaskSpec


def _binary_from_counts(tp: int, fn: int, fp: int, tn: int) -> tuple[list[str], list[str]]:
    """Labels with a known confusion matrix (positive class 'PT')."""
    y_true = ["PT"] * (tp + fn) + ["CN"] * (fp + tn)
    y_pred = ["PT"] * tp + ["CN"] * fn + ["PT"] * fp + ["CN"] * tn
    return y_true, y_pred


def test_f1_on_a_known_confusion_matrix_and_positive_class():
    # TP=6, FN=2, FP=3, TN=9: F1(PT) = 12 / (12 + 3 + 2) = 12/17; F1(CN) = 18 / (18 + 2 + 3)
    y_true, y_pred = _binary_from_counts(6, 2, 3, 9)
    classes = ["CN", "PT"]
    np.testing.assert_array_equal(M.confusion_matrix(y_true, y_pred, classes), [[9, 3], [2, 6]])
    assert M.f1_score(y_true, y_pred, classes, positive="PT") == pytest.approx(12 / 17)
    assert M.f1_score(y_true, y_pred, classes, positive="CN") == pytest.approx(18 / 23)
    assert M.accuracy(y_true, y_pred) == pytest.approx(15 / 20)
    assert M.balanced_accuracy(y_true, y_pred, classes) == pytest.approx((6 / 8 + 9 / 12) / 2)
    with pytest.raises(ValueError, match="positive"):
        M.f1_score(y_true, y_pred, classes)


def test_f1_is_computed_on_the_whole_split_not_averaged_over_batches():
    y_true, y_pred = _binary_from_counts(6, 2, 3, 9)
    whole = M.f1_score(y_true, y_pred, ["CN", "PT"], positive="PT")
    # The official code's batch-averaged F1 (batches of 4, weighted by size) differs.
    order = np.random.default_rng(1).permutation(len(y_true))
    t, p = np.asarray(y_true)[order], np.asarray(y_pred)[order]
    batched = np.mean(
        [M.f1_score(t[i : i + 4], p[i : i + 4], ["CN", "PT"], positive="PT") for i in (0, 4, 8)]
        + [M.f1_score(t[i : i + 4], p[i : i + 4], ["CN", "PT"], positive="PT") for i in (12, 16)]
    )
    assert whole == pytest.approx(12 / 17)
    assert batched != pytest.approx(whole, abs=1e-3)
    # ... and the value is invariant to the order of subjects.
    assert M.f1_score(t, p, ["CN", "PT"], positive="PT") == pytest.approx(whole)


def test_f1_no_positive_prediction_is_zero_not_nan():
    assert M.f1_score(["CN", "PT"], ["CN", "CN"], ["CN", "PT"], positive="PT") == 0.0


def test_auc_known_case_with_ties():
    # positives score 0.9, 0.6, 0.4; negatives 0.6, 0.2: pairs won 2 + 1.5 + 1 = 4.5 of 6
    y = ["PT", "PT", "PT", "CN", "CN"]
    p_pt = np.array([0.9, 0.6, 0.4, 0.6, 0.2])
    proba = np.c_[1 - p_pt, p_pt]
    assert M.roc_auc(y, proba, ["CN", "PT"], positive="PT") == pytest.approx(4.5 / 6)
    # Complementary probabilities: the AUC is the same with either class positive ...
    assert M.roc_auc(y, proba, ["CN", "PT"], positive="CN") == pytest.approx(4.5 / 6)
    # ... and it is read from the positive class's column: scoring CN by p_PT is 1.5 / 6.
    assert M.binary_auc(np.asarray(y) == "CN", p_pt) == pytest.approx(1.5 / 6)
    assert np.isnan(
        M.roc_auc(["PT", "PT"], np.c_[[0.1, 0.2], [0.9, 0.8]], ["CN", "PT"], positive="PT")
    )


def test_regression_metrics_known_values():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0])
    assert M.mae(t, p) == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    # SS_res = 0.25 + 0 + 1 + 1 = 2.25; SS_tot = 5
    assert M.r2(t, p) == pytest.approx(1 - 2.25 / 5)
    assert M.pearson_r(t, p) == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert np.isnan(M.pearson_r(t, np.full(4, 2.5)))
    assert M.r2(t, np.full(4, t.mean())) == pytest.approx(0.0)


def test_agreement_with_sklearn():
    from sklearn import metrics as sk

    rng = np.random.default_rng(3)
    classes = ["a", "b", "c"]
    t = rng.choice(classes, 60)
    p = np.where(rng.random(60) < 0.6, t, rng.choice(classes, 60))
    proba = rng.dirichlet(np.ones(3), 60)
    for avg in ("macro", "weighted"):
        assert M.f1_score(t, p, classes, average=avg) == pytest.approx(
            sk.f1_score(t, p, average=avg)
        )
    assert M.balanced_accuracy(t, p, classes) == pytest.approx(sk.balanced_accuracy_score(t, p))
    assert M.roc_auc(t, proba, classes) == pytest.approx(
        sk.roc_auc_score(t, proba, multi_class="ovr", average="macro", labels=classes)
    )
    yt, yp = rng.normal(size=30), rng.normal(size=30)
    assert M.r2(yt, yp) == pytest.approx(sk.r2_score(yt, yp))
    assert M.mae(yt, yp) == pytest.approx(sk.mean_absolute_error(yt, yp))
    b = rng.integers(0, 2, 40).astype(bool)
    s = rng.random(40).round(1)  # ties
    assert M.binary_auc(b, s) == pytest.approx(sk.roc_auc_score(b, s))


def test_unknown_label_is_an_error():
    with pytest.raises(ValueError, match="not in classes"):
        M.confusion_matrix(["a", "x"], ["a", "a"], ["a", "b"])


def test_per_fold_metrics_and_summary_use_test_rows_only():
    spec = TaskSpec("ds", "dx", "diagnosis", "classification", positive="PT")
    rows = []
    for fold, (tp, fn, fp, tn) in enumerate([(3, 1, 0, 4), (2, 2, 2, 2)]):
        y_true, y_pred = _binary_from_counts(tp, fn, fp, tn)
        for split in ("test", "val"):
            for i, (a, b) in enumerate(zip(y_true, y_pred, strict=True)):
                pred = b if split == "test" else a  # val rows are perfect: must not count
                rows.append(
                    {
                        "dataset": "ds",
                        "task": "dx",
                        "model": "m",
                        "seed": 0,
                        "fold": fold,
                        "split": split,
                        "subject": f"{fold}{i}",
                        "y_true": a,
                        "y_pred": pred,
                        "p_CN": float(pred == "CN"),
                        "p_PT": float(pred == "PT"),
                    }
                )
    frame = pd.DataFrame(rows)
    per = M.per_fold_metrics(frame, {("ds", "dx"): (spec, ["CN", "PT"])})
    f1 = per.loc[per["metric"] == "f1"].sort_values("fold")["value"].to_numpy()
    np.testing.assert_allclose(f1, [6 / 7, 4 / 8])
    summary = M.summarise(per).set_index("metric")
    assert summary.loc["f1", "mean"] == pytest.approx((6 / 7 + 0.5) / 2)
    assert summary.loc["f1", "std"] == pytest.approx(np.std([6 / 7, 0.5], ddof=1))
    assert summary.loc["f1", "n"] == 2
    assert list(M.summarise(per).columns) == list(M.METRIC_COLUMNS)


def test_partial_r_by_hand_on_a_small_case():
    # covariate c = (0, 1, 2, 3); t = (1, 2, 4, 3) and p = (2, 1, 3, 5).
    # OLS on c: t_hat = 1.3 + 0.8 c -> residuals (-0.3, -0.1, 1.1, -0.7);
    #           p_hat = 1.1 + 1.1 c -> residuals (0.9, -1.2, -0.3, 0.6).
    # r = -0.9 / sqrt(1.8 * 2.7) = -1 / sqrt(6).
    c = [0.0, 1.0, 2.0, 3.0]
    t = [1.0, 2.0, 4.0, 3.0]
    p = [2.0, 1.0, 3.0, 5.0]
    rt = np.array([-0.3, -0.1, 1.1, -0.7])
    rp = np.array([0.9, -1.2, -0.3, 0.6])
    expected = (rt @ rp) / np.sqrt((rt @ rt) * (rp @ rp))  # residual means are 0
    assert M.partial_r(t, p, c) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(-1 / np.sqrt(6), abs=1e-12)


def test_partial_r_equals_the_closed_form_and_differs_from_r():
    rng = np.random.default_rng(3)
    age = rng.uniform(18, 88, 200)
    y_true = -0.3 * age + rng.normal(0, 5, 200)
    y_pred = -0.25 * age + 0.4 * y_true + rng.normal(0, 5, 200)
    r = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    r_tp, r_tc, r_pc = r(y_true, y_pred), r(y_true, age), r(y_pred, age)
    closed = (r_tp - r_tc * r_pc) / np.sqrt((1 - r_tc**2) * (1 - r_pc**2))
    value = M.partial_r(y_true, y_pred, age)
    assert value == pytest.approx(closed, abs=1e-10)
    assert abs(value - M.pearson_r(y_true, y_pred)) > 0.1  # age inflates the raw r
    # a prediction that is age alone has no partial correlation left (undefined)
    assert np.isnan(M.partial_r(y_true, 2.0 * age + 1.0, age))
    # subjects without a covariate value are left out; a constant covariate: NaN
    with_gap = np.r_[age[:-1], np.nan]
    assert M.partial_r(y_true, y_pred, with_gap) == pytest.approx(
        M.partial_r(y_true[:-1], y_pred[:-1], age[:-1]), abs=1e-12
    )
    assert np.isnan(M.partial_r(y_true, y_pred, np.ones(200)))


def _regression_frame(rng: np.random.Generator, with_covariate: bool) -> pd.DataFrame:
    rows = []
    for fold in range(3):
        age = rng.uniform(20, 80, 30)
        y = -0.2 * age + rng.normal(0, 3, 30)
        pred = 0.5 * y - 0.1 * age + rng.normal(0, 3, 30)
        for split in ("val", "test"):
            for i in range(30):
                row = {
                    "dataset": "camcan",
                    "task": "fluid",
                    "model": "m",
                    "seed": 0,
                    "fold": fold,
                    "split": split,
                    "subject": f"{fold}-{i}",
                    "y_true": y[i],
                    "y_pred": pred[i] if split == "test" else y[i],
                }
                if with_covariate:
                    row[M.COVARIATE_COLUMN] = age[i]
                rows.append(row)
    return pd.DataFrame(rows)


def test_per_fold_partial_r_is_scored_per_test_partition_and_summarised():
    spec = TaskSpec("camcan", "fluid", "fluid_intelligence", "regression", partial_out="age")
    frame = _regression_frame(np.random.default_rng(0), with_covariate=True)
    per = M.per_fold_metrics(frame, {spec.key: (spec, None)})
    got = per.loc[per["metric"] == "partial_r"].sort_values("fold")["value"].to_numpy()
    test = frame.loc[frame["split"] == "test"]
    want = [
        M.partial_r(g["y_true"], g["y_pred"], g[M.COVARIATE_COLUMN])
        for _, g in test.groupby("fold", sort=True)
    ]
    np.testing.assert_allclose(got, want)
    assert len(got) == 3 and not np.allclose(got, 1.0)
    summary = M.summarise(per)
    assert list(summary["metric"]) == ["mae", "pearson_r", "r2", "partial_r"]
    row = summary.set_index("metric").loc["partial_r"]
    assert row["mean"] == pytest.approx(np.mean(want))
    assert row["std"] == pytest.approx(np.std(want, ddof=1))
    # without partial_out the metric is absent; with it but no column, an error
    plain = TaskSpec("camcan", "fluid", "fluid_intelligence", "regression")
    assert "partial_r" not in set(M.per_fold_metrics(frame, {plain.key: (plain, None)})["metric"])
    bare = _regression_frame(np.random.default_rng(0), with_covariate=False)
    with pytest.raises(ValueError, match="covariate"):
        M.per_fold_metrics(bare, {spec.key: (spec, None)})
